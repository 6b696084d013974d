# fish completion for lora-registry; task names (tasks -q) and
# NAME@VERSION (ls -q columns NAME VERSION TASK BASE ...) come from the
# registry.
set -l cmds init trust untrust keys add ls tasks show resolve rm gc verify evals

function __lora_registry_col
    if test "$argv[1]" = task
        lora-registry tasks -q 2>/dev/null
        return
    end
    lora-registry ls -q 2>/dev/null | awk -v c=$argv[1] '
        c == "task" { print $3 } c == "base" { print $4 } c == "ref" { print $1 "@" $2 }
        c == "name" { print $1 }' | sort -u
end

complete -c lora-registry -f
complete -c lora-registry -n "not __fish_seen_subcommand_from $cmds" -a init -d 'create the registry'
complete -c lora-registry -n "not __fish_seen_subcommand_from $cmds" -a trust -d 'trust a minisign public key'
complete -c lora-registry -n "not __fish_seen_subcommand_from $cmds" -a untrust -d 'stop trusting a key'
complete -c lora-registry -n "not __fish_seen_subcommand_from $cmds" -a keys -d 'list trusted keys'
complete -c lora-registry -n "not __fish_seen_subcommand_from $cmds" -a add -d 'verify and register an archive'
complete -c lora-registry -n "not __fish_seen_subcommand_from $cmds" -a ls -d 'list adapters'
complete -c lora-registry -n "not __fish_seen_subcommand_from $cmds" -a tasks -d 'list task names'
complete -c lora-registry -n "not __fish_seen_subcommand_from $cmds" -a show -d 'show one adapter'
complete -c lora-registry -n "not __fish_seen_subcommand_from $cmds" -a resolve -d 'print the archive serving a task'
complete -c lora-registry -n "not __fish_seen_subcommand_from $cmds" -a rm -d 'remove an adapter'
complete -c lora-registry -n "not __fish_seen_subcommand_from $cmds" -a gc -d 'remove unreferenced blobs'
complete -c lora-registry -n "not __fish_seen_subcommand_from $cmds" -a verify -d 're-hash every blob'
complete -c lora-registry -n "not __fish_seen_subcommand_from $cmds" -a evals -d 'list eval results'
complete -c lora-registry -n "not __fish_seen_subcommand_from $cmds" -l version -d 'show the version'

complete -c lora-registry -s r -l registry -r -F -d 'registry database'
complete -c lora-registry -s j -l json -d 'machine-readable output'
complete -c lora-registry -s q -l quiet -d 'no confirmation text'
complete -c lora-registry -s h -l help -d 'show help'
complete -c lora-registry -n "__fish_seen_subcommand_from trust" -s n -l name -x -d 'who the key belongs to'
complete -c lora-registry -n "__fish_seen_subcommand_from trust" -F -a "(__fish_complete_suffix .pub)"
complete -c lora-registry -n "__fish_seen_subcommand_from add" -s u -l allow-untrusted -d 'accept an archive no trusted key signed'
complete -c lora-registry -n "__fish_seen_subcommand_from add" -F -a "(__fish_complete_suffix .lora)"
complete -c lora-registry -n "__fish_seen_subcommand_from ls" -s t -l task -x -a "(__lora_registry_col task)" -d 'only this task'
complete -c lora-registry -n "__fish_seen_subcommand_from ls tasks resolve" -s b -l base -x -a "(__lora_registry_col base)" -d 'only this base model'
complete -c lora-registry -n "__fish_seen_subcommand_from resolve" -l version -x -d 'this version'
complete -c lora-registry -n "__fish_seen_subcommand_from resolve" -a "(__lora_registry_col task)" -d task
complete -c lora-registry -n "__fish_seen_subcommand_from show rm" -a "(__lora_registry_col ref)" -d adapter
complete -c lora-registry -n "__fish_seen_subcommand_from evals" -a "(__lora_registry_col name)" -d adapter
complete -c lora-registry -n "__fish_seen_subcommand_from untrust" -a "(lora-registry keys 2>/dev/null | string split -f1 ' ')" -d 'key id'
