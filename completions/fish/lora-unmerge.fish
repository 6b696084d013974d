# fish completion for lora-unmerge
# task:NAME for each task in the registry (lora-registry tasks -q)
function __lora_task_specs
    for t in (lora-registry tasks -q 2>/dev/null)
        echo task:$t
    end
end
complete -c lora-unmerge -s a -l adapter -r -F -a '(__lora_task_specs)' -d 'adapter to take out, ADAPTER[:WEIGHT]'
complete -c lora-unmerge -s o -l output -r -F -d 'output file or folder'
complete -c lora-unmerge -s r -l receipt -r -F -d 'merge receipt'
complete -c lora-unmerge -l receipt-key -r -F -d 'the receipt must be signed by this public key'
complete -c lora-unmerge -l check -d 'report exactness, write nothing'
complete -c lora-unmerge -l base -r -F -d 'with --check, the checkpoint to compare with'
complete -c lora-unmerge -l dtype -x -a 'F32 F16 BF16' -d 'without a receipt, dtype of the base'
complete -c lora-unmerge -s j -l threads -x -d 'worker threads'
complete -c lora-unmerge -l shard -r -d 'only this shard of a sharded checkpoint'
complete -c lora-unmerge -s p -l pubkey -r -F -d 'minisign public key'
complete -c lora-unmerge -l no-verify -d 'do not check archive signatures'
complete -c lora-unmerge -l registry -r -F -d 'registry database'
complete -c lora-unmerge -l any-base -d 'keep a restored base other than the recorded one (warns)'
complete -c lora-unmerge -l json -d 'JSON report on stdout'
complete -c lora-unmerge -s q -l quiet -d 'no progress, no summary'
complete -c lora-unmerge -s h -l help -d 'show help'
complete -c lora-unmerge -s V -l version -d 'show version'
