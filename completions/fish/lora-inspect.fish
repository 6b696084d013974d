# fish completion for lora-inspect
# task:NAME for each task in the registry (lora-registry tasks -q)
function __lora_task_specs
    for t in (lora-registry tasks -q 2>/dev/null)
        echo task:$t
    end
end
complete -c lora-inspect -n 'not string match -q -- "-*" (commandline -ct)' -a '(__lora_task_specs)' -d 'registry task'
complete -c lora-inspect -s b -l base -r -F -d 'Check against a base checkpoint'
complete -c lora-inspect -s c -l check -d 'Exit 1 when an error is found'
complete -c lora-inspect -s s -l strict -d 'Warnings count as errors'
complete -c lora-inspect -s j -l json -d 'One JSON object on stdout'
complete -c lora-inspect -s t -l tensors -d 'List every tensor'
complete -c lora-inspect -s p -l pubkey -r -F -d 'Minisign public key for .lora archives'
complete -c lora-inspect -l no-verify -d 'Open archives without checking signatures'
complete -c lora-inspect -l registry -r -F -d 'registry database'
complete -c lora-inspect -s q -l quiet -d 'No report, the exit status only'
complete -c lora-inspect -s h -l help -d 'Show help'
complete -c lora-inspect -s V -l version -d 'Show version'
complete -c lora-inspect -l spectrum -d 'Singular values, effective and stable rank of each dW'
complete -c lora-inspect -l compare -r -F -a '(__lora_task_specs)' -d 'Subspace similarity with another adapter'
complete -c lora-inspect -l svg -r -F -d 'With --compare: heat maps as SVG'
complete -c lora-inspect -l amplification -d 'With --base: amplification of W by dW'
complete -c lora-inspect -l module -x -d 'Only this module (repeatable)'
