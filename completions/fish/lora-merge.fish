# fish completion for lora-merge
# task:NAME for each task in the registry (lora-registry tasks -q)
function __lora_task_specs
    for t in (lora-registry tasks -q 2>/dev/null)
        echo task:$t
    end
end
complete -c lora-merge -s a -l adapter -r -F -a '(__lora_task_specs)' -d 'adapter to merge, ADAPTER[:WEIGHT]'
complete -c lora-merge -s o -l output -r -F -d 'output file or folder'
complete -c lora-merge -l unmerge -r -F -a '(__lora_task_specs)' -d 'adapter to take out first (task switch)'
complete -c lora-merge -l receipt -r -F -d 'receipt to write (or read, with --unmerge)'
complete -c lora-merge -l no-receipt -d 'write no receipt'
complete -c lora-merge -l sign-receipt -r -F -d 'sign the receipt with this secret key'
complete -c lora-merge -l receipt-key -r -F -d 'with --unmerge, the receipt must be signed by this public key'
complete -c lora-merge -l dtype -x -a 'F32 F16 BF16' -d 'dtype of changed tensors'
complete -c lora-merge -l convert-all -d 'with --dtype: convert every tensor and config.json'
complete -c lora-merge -l rounding -x -a 'nearest reversible' -d 'rounding of merged values'
complete -c lora-merge -s j -l threads -x -d 'worker threads'
complete -c lora-merge -l shard -r -d 'only this shard of a sharded checkpoint'
complete -c lora-merge -l force -d 'merge an adapter the base already records'
complete -c lora-merge -l allow-nonfinite -d 'write values beyond the output dtype as inf instead of refusing'
complete -c lora-merge -l any-base -d 'merge into a base other than the recorded one (warns)'
complete -c lora-merge -s p -l pubkey -r -F -d 'minisign public key'
complete -c lora-merge -l no-verify -d 'do not check archive signatures'
complete -c lora-merge -l registry -r -F -d 'registry database'
complete -c lora-merge -l json -d 'JSON summary on stdout'
complete -c lora-merge -s q -l quiet -d 'no progress, no summary'
complete -c lora-merge -s h -l help -d 'show help'
complete -c lora-merge -s V -l version -d 'show version'
