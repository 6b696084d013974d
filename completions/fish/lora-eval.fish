# fish completion for lora-eval
# task:NAME for each task in the registry (lora-registry tasks -q)
function __lora_task_specs
    for t in (lora-registry tasks -q 2>/dev/null)
        echo task:$t
    end
end
complete -c lora-eval -s m -l model -r -a '(__fish_complete_directories)' -d 'base model folder'
complete -c lora-eval -s a -l adapter -r -F -a '(__lora_task_specs)' -d 'adapter folder, .lora archive, task: or reg:'
complete -c lora-eval -s d -l data -r -F -d 'JSONL data set (- for stdin)'
complete -c lora-eval -l mode -x -a 'unmerged merged both' -d 'forward mode'
complete -c lora-eval -l min-accuracy -x -d 'exit 1 below this accuracy'
complete -c lora-eval -l limit -x -d 'first N items only'
complete -c lora-eval -l check-recovery -d 'merge, unmerge, compare with the base bit for bit'
complete -c lora-eval -s p -l pubkey -r -F -d 'minisign public key'
complete -c lora-eval -l no-verify -d 'do not check archive signatures'
complete -c lora-eval -l any-base -d 'evaluate on a base other than the recorded one (warns)'
complete -c lora-eval -l record -d 'write accuracy and NLL to the registry evals table'
complete -c lora-eval -l registry -r -F -d 'registry database'
complete -c lora-eval -s j -l threads -x -d 'OpenBLAS threads'
complete -c lora-eval -l json -d 'JSON output'
complete -c lora-eval -s q -l quiet -d 'no progress'
complete -c lora-eval -s h -l help -d 'help'
complete -c lora-eval -s V -l version -d 'version'
