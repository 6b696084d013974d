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
complete -c lora-eval -l record -d 'write the metrics to the registry evals table'
complete -c lora-eval -l predictions -r -F -d 'one JSON line per item (- for stdout)'
complete -c lora-eval -l max-new-tokens -x -d 'generate up to the target length + N tokens'
complete -c lora-eval -l text -r -F -d 'perplexity of a plain text file'
complete -c lora-eval -l context -x -d '--text window in tokens'
complete -c lora-eval -l stride -x -d '--text window step'
complete -c lora-eval -l any-base -d 'evaluate on a base other than the recorded one (warns)'
complete -c lora-eval -l registry -r -F -d 'registry database'
complete -c lora-eval -l tokenize -d 'JSONL text lines to token ids'
complete -c lora-eval -l detokenize -d 'JSONL token ids to text'
complete -c lora-eval -l tokenizer -r -F -d 'tokenizer.json or its folder'
complete -c lora-eval -l no-special -d 'no BOS/EOS; drop special tokens when decoding'
complete -c lora-eval -s j -l threads -x -d 'OpenBLAS threads'
complete -c lora-eval -l json -d 'JSON output'
complete -c lora-eval -s q -l quiet -d 'no progress'
complete -c lora-eval -s h -l help -d 'help'
complete -c lora-eval -s V -l version -d 'version'
