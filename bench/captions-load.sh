#!/usr/bin/env bash
# SPEAKERS (default 4, at most 8) speakers reading 31 s of espeak-ng speech
# at once into one space, captions on or off, WORKERS caption workers
# (default 1): a listener's live.opus over 30 s (seconds of audio received),
# the mixer's late ticks meanwhile, the captions counters (dropped phrases
# show a saturated pool) and the load average.
# usage: [SPEAKERS=8] [WORKERS=1] bench/captions-load.sh true|false [PORT]
#        (AMPHI_BIN, MODEL as bench/captions.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
CAP=${1:-true}; PORT=${2:-38250}; SPEAKERS=${SPEAKERS:-4}; WORKERS=${WORKERS:-1}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/srv"
espeak-ng -v en-us -s 150 --stdout "Welcome everyone to this audio room. Today we talk about the weather, the river and the small town by the hills. The people there grow apples and pears, and every autumn they hold a market in the square. Children sing, the band plays old songs, and the bakers sell fresh bread from early morning until late at night. Later we will take questions from the audience, so please raise your hand if you want to speak. Thank you all for listening, and see you next week." \
  | sox -t wav - -t raw -r 48000 -e signed -b 16 -c 1 "$tmp/long.raw"
AMPHI_ADMIN_TOKEN=adm "${AMPHI_BIN:-target/debug/amphi}" serve --http 127.0.0.1:$PORT --data-dir "$tmp/srv" --captions-model "${MODEL:-target/captions-model}" --captions-workers "$WORKERS" > "$tmp/srv.log" 2>&1 &
SP=$!; sleep 3
R=$(curl -s -XPOST -H "Authorization: Bearer adm" -H 'content-type: application/json' -d "{\"title\":\"t\",\"captions\":$CAP,\"max_stage\":8}" http://127.0.0.1:$PORT/api/v1/spaces)
ID=$(echo $R | python3 -c "import json,sys;print(json.load(sys.stdin)['space']['id'])"); TOK=$(echo $R | python3 -c "import json,sys;print(json.load(sys.stdin)['host']['token'])")
curl -s -XPOST -H "Authorization: Bearer $TOK" http://127.0.0.1:$PORT/api/v1/spaces/$ID/start >/dev/null
TOKS=($TOK)
for n in $(echo b c d e f g h | cut -d" " -f1-$((SPEAKERS - 1))); do
  J=$(curl -s -XPOST -H 'content-type: application/json' -d "{\"name\":\"$n\"}" http://127.0.0.1:$PORT/api/v1/spaces/$ID/join)
  P=$(echo $J | python3 -c "import json,sys;print(json.load(sys.stdin)['participant_id'])"); T=$(echo $J | python3 -c "import json,sys;print(json.load(sys.stdin)['token'])")
  # A raised hand makes them someone the host may bring on stage.
  curl -s -XPOST -H "Authorization: Bearer $T" http://127.0.0.1:$PORT/api/v1/spaces/$ID/hand > /dev/null
  curl -s -o /dev/null -w "stage $n: %{http_code}\n" -XPOST -H "Authorization: Bearer $TOK" http://127.0.0.1:$PORT/api/v1/spaces/$ID/stage/$P
  TOKS+=($T)
done
PIDS=(); i=0; for T in "${TOKS[@]}"; do
  python3 scripts/whip_client.py --url http://127.0.0.1:$PORT/api/v1/spaces/$ID/whip --token $T --seconds 42 --loopback-only --honor-fmtp --speech "$tmp/long.raw" --speech-at $((2 + i)) > /dev/null 2>&1 &
  PIDS+=($!); i=$((i+1))
done
sleep 4
L0=$(curl -s http://127.0.0.1:$PORT/metrics | awk '/^amphi_mixer_late_ticks_total/{print $2}')
timeout 30 ffmpeg -v quiet -i "http://127.0.0.1:$PORT/spaces/$ID/live.opus?burst_ms=300" -f s16le -ac 1 -ar 48000 - > $tmp/l.raw || true
L1=$(curl -s http://127.0.0.1:$PORT/metrics | awk '/^amphi_mixer_late_ticks_total/{print $2}')
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "captions=$CAP speakers=$SPEAKERS workers=$WORKERS listener got $(python3 -c "import os;print(round(os.path.getsize('$tmp/l.raw')/96000,2))") s of audio in 30 s; mixer late ticks during it: $((L1-L0))"
curl -s http://127.0.0.1:$PORT/metrics | grep -E "^amphi_captions_(phrases|cues|latency|packets_dropped|phrases_dropped)" || true
curl -s "http://127.0.0.1:$PORT/api/v1/spaces/$ID/captions" | python3 -c "import json,sys;[print(c['name'],c['start_ms'],c['end_ms'],c['text'][:60]) for c in json.load(sys.stdin)['cues']]"
kill $SP "${PIDS[@]}" 2>/dev/null || true
