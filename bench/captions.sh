#!/usr/bin/env bash
# The cost and latency of live captions (docs/PERFORMANCE.md): one speaker
# (aiortc) reads 31 s of espeak-ng speech into a space with captions on or
# off; prints the node's CPU over 36 s, the captions metrics and the cues.
# usage: bench/captions.sh true|false [PORT]
# (AMPHI_BIN: the binary, default target/debug/amphi; MODEL: the model dir,
# default target/captions-model, see scripts/fetch-captions-model)
set -euo pipefail
cd "$(dirname "$0")/.."
CAP=${1:-true}; PORT=${2:-38222}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/srv"
espeak-ng -v en-us -s 150 --stdout "Welcome everyone to this audio room. Today we talk about the weather, the river and the small town by the hills. The people there grow apples and pears, and every autumn they hold a market in the square. Children sing, the band plays old songs, and the bakers sell fresh bread from early morning until late at night. Later we will take questions from the audience, so please raise your hand if you want to speak. Thank you all for listening, and see you next week." \
  | sox -t wav - -t raw -r 48000 -e signed -b 16 -c 1 "$tmp/long.raw"
AMPHI_ADMIN_TOKEN=adm "${AMPHI_BIN:-target/debug/amphi}" serve --http 127.0.0.1:$PORT --data-dir "$tmp/srv" --captions-model "${MODEL:-target/captions-model}" > "$tmp/srv.log" 2>&1 &
SP=$!; sleep 3
R=$(curl -s -XPOST -H "Authorization: Bearer adm" -H 'content-type: application/json' -d "{\"title\":\"t\",\"captions\":$CAP}" http://127.0.0.1:$PORT/api/v1/spaces)
ID=$(echo $R | python3 -c "import json,sys;print(json.load(sys.stdin)['space']['id'])"); TOK=$(echo $R | python3 -c "import json,sys;print(json.load(sys.stdin)['host']['token'])")
curl -s -XPOST -H "Authorization: Bearer $TOK" http://127.0.0.1:$PORT/api/v1/spaces/$ID/start >/dev/null
python3 scripts/whip_client.py --url http://127.0.0.1:$PORT/api/v1/spaces/$ID/whip --token $TOK --seconds 40 --loopback-only --honor-fmtp --speech "$tmp/long.raw" --speech-at 2 > /dev/null 2>&1 &
WP=$!
sleep 2
t0=$(awk '{print $14+$15}' /proc/$SP/stat)
sleep 36
t1=$(awk '{print $14+$15}' /proc/$SP/stat)
echo "captions=$CAP node CPU over 36 s: $(( t1 - t0 )) ticks ($(getconf CLK_TCK)/s)"
curl -s http://127.0.0.1:$PORT/metrics | grep -E "^amphi_captions_(cues|phrases|cpu|latency)" || true
curl -s "http://127.0.0.1:$PORT/api/v1/spaces/$ID/captions" | python3 -c "import json,sys;[print(c['start_ms'],c['end_ms'],c['text']) for c in json.load(sys.stdin)['cues']]"
kill $WP 2>/dev/null; kill $SP; wait $SP 2>/dev/null || true
