# fish completion for lora-convert
# task:NAME for each task in the registry (lora-registry tasks -q)
function __lora_task_specs
    for t in (lora-registry tasks -q 2>/dev/null)
        echo task:$t
    end
end
complete -c lora-convert -n 'not string match -q -- "-*" (commandline -ct)' -a '(__lora_task_specs)' -d 'registry task'
complete -c lora-convert -s t -l to -x -a 'gguf peft' -d 'Output format'
complete -c lora-convert -s b -l base -r -F -d 'Base model folder or its config.json'
complete -c lora-convert -s o -l output -r -F -d 'GGUF file or PEFT folder to write'
complete -c lora-convert -l outtype -x -a 'f32 f16 bf16' -d 'Dtype of the tensors written'
complete -c lora-convert -l skip-unsupported -d 'Leave out and list what the target cannot hold'
complete -c lora-convert -s p -l pubkey -r -F -d 'Minisign public key for archives'
complete -c lora-convert -l no-verify -d 'Open archives without checking signatures'
complete -c lora-convert -s f -l force -d 'Replace the output'
complete -c lora-convert -s j -l json -d 'Report as JSON'
complete -c lora-convert -s q -l quiet -d 'No report'
complete -c lora-convert -s h -l help -d 'Show help'
complete -c lora-convert -s V -l version -d 'Show version'
