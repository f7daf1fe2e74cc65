#!/usr/bin/env bash
# Content-scan throughput: `rigwatch inspect` (SHA-256 + all content rules in
# one pass) against Debian's `yara` CLI scanning the same files for the same
# strings (`rigwatch signatures export-yara`), one thread each, warm cache.
# Needs: yara, hyperfine (apt-get install yara hyperfine). Run from the repo root.
set -euo pipefail
cargo build -q --release -p rigwatch-agent -p rigwatch-e2e
RW=target/release/rigwatch
CORPUS=target/bench-corpus
SIZE_MB=${SIZE_MB:-256}
if [ ! -d "$CORPUS" ]; then
  mkdir -p "$CORPUS"
  total=0
  # real executables and libraries from this host, largest first
  while read -r size path; do
    [ $((total + size)) -gt $((SIZE_MB * 1024 * 1024)) ] && continue
    cp "$path" "$CORPUS/$(echo "$path" | tr / _)"
    total=$((total + size))
  done < <(find /usr/bin /usr/lib/x86_64-linux-gnu -maxdepth 1 -type f -size +100k -size -32M -printf '%s %p\n' | sort -rn)
  cp target/release/minersim "$CORPUS/" 2>/dev/null || true
fi
$RW signatures export-yara > target/bench-corpus.yar
bytes=$(du -sb "$CORPUS" | cut -f1)
files=$(ls "$CORPUS" | wc -l)
echo "corpus: $files files, $((bytes / 1024 / 1024)) MiB; rules: $(grep -c '^rule' target/bench-corpus.yar) YARA rules, $(grep -c '\$s' target/bench-corpus.yar) strings"
cat "$CORPUS"/* > /dev/null   # warm the page cache
# both must find the same files
yara -p 1 -r target/bench-corpus.yar "$CORPUS" | awk '{print $2}' | sort -u > target/bench-yara.txt || true
$RW inspect --json --no-default-signatures "$CORPUS"/* | python3 -c 'import sys,json
for l in sys.stdin:
    j=json.loads(l)
    if any(e["kind"]=="binary_content" for e in j["evidence"]): print(j["file"])' | sort -u > target/bench-rigwatch.txt || true
echo "files matched: yara $(wc -l < target/bench-yara.txt), rigwatch $(wc -l < target/bench-rigwatch.txt)"
diff target/bench-yara.txt target/bench-rigwatch.txt && echo "same files matched"
hyperfine --warmup 1 --runs ${RUNS:-5} --export-markdown target/bench-content.md \
  -n "yara -p 1 (content only)" "yara -p 1 -r target/bench-corpus.yar $CORPUS" \
  -n "rigwatch inspect (content + SHA-256)" "$RW inspect --no-default-signatures $CORPUS/* > /dev/null; test \$? -le 1"
cat target/bench-content.md
python3 - "$bytes" target/bench-content.md <<'PY'
import sys, re
b = int(sys.argv[1])
for line in open(sys.argv[2]):
    m = re.match(r"\|\s*`?([^|`]+)`?\s*\|\s*([\d.]+)", line)
    if m and not line.startswith("| Command"):
        print(f"{m.group(1).strip()}: {b / float(m.group(2)) * 1000 / 1e6:.0f} MB/s")
PY
