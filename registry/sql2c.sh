#!/bin/sh
# registry/sql2c.sh - turn the registry migrations (registry/NNNN-*.sql,
# given in order) into C string literals that registry.c includes, so
# that liblora carries its own schema.  Portable: sh + awk only (no
# xxd).  Output on stdout.
set -e
echo "/* registry_sql.inc - generated from the registry migrations by registry/sql2c.sh; do not edit. */"
n=0
for f in "$@"; do
    n=$((n + 1))
    echo "static const char registry_migration_$n[] ="
    awk '{ gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); gsub(/\t/, "\\t"); printf "    \"%s\\n\"\n", $0 }' "$f"
    echo "    ;"
done
echo "/* Migration i (0-based) takes a database from user_version i to i + 1. */"
echo "static const char *const registry_migrations[] = {"
i=1
while [ "$i" -le "$n" ]; do
    echo "    registry_migration_$i,"
    i=$((i + 1))
done
echo "};"
echo "#define REGISTRY_SCHEMA_VERSION $n"
