# fish completion for lora-rank-reduce
# task:NAME for each task in the registry (lora-registry tasks -q)
function __lora_task_specs
    for t in (lora-registry tasks -q 2>/dev/null)
        echo task:$t
    end
end
complete -c lora-rank-reduce -n 'not string match -q -- "-*" (commandline -ct)' -a '(__lora_task_specs)' -d 'registry task'
complete -c lora-rank-reduce -s a -l adapter -r -F -a '(__lora_task_specs)' -d 'Input adapter, ADAPTER[:WEIGHT]'
complete -c lora-rank-reduce -s o -l output -r -F -d 'Output adapter folder'
complete -c lora-rank-reduce -s r -l rank -x -d 'Keep K singular values (0: exact)'
complete -c lora-rank-reduce -s e -l energy -x -d 'Keep fraction F of the energy'
complete -c lora-rank-reduce -s R -l sv-ratio -x -d 'Keep sigma >= sigma_1/R'
complete -c lora-rank-reduce -s m -l max-rank -x -d 'At most M per module'
complete -c lora-rank-reduce -s M -l method -x -a 'sum ties dare_linear dare_ties magnitude_prune' -d 'How the inputs combine'
complete -c lora-rank-reduce -s d -l density -x -d 'Fraction of each delta kept'
complete -c lora-rank-reduce -l majority-sign -x -a 'total frequency' -d 'TIES sign election'
complete -c lora-rank-reduce -l seed -x -d 'Seed of the DARE generator'
complete -c lora-rank-reduce -s f -l force -d 'Replace the output folder'
complete -c lora-rank-reduce -l json -d 'Report as JSON'
complete -c lora-rank-reduce -s q -l quiet -d 'No report'
complete -c lora-rank-reduce -s h -l help -d 'Show help'
complete -c lora-rank-reduce -s V -l version -d 'Show version'
