# Shared by the bench scripts (sourced, not run).

# start_icecast PORT [TLS_PORT PEM]: Icecast 2.4 on 127.0.0.1:PORT (and
# TLS on TLS_PORT with the certificate and key in PEM), fed a 440 Hz
# 32 kbit/s Opus tone in 20 ms frames by ffmpeg at /amphi.opus — the same
# program amphi serves in the bench. Needs N (listeners) and TMP; sets
# ICE_PID and adds both processes to PIDS.
start_icecast() {
  local port=$1 tls_port=${2:-} pem=${3:-}
  local tls_socket="" tls_cert="" loglevel=1
  if [ -n "$tls_port" ]; then
    tls_socket="<listen-socket><port>$tls_port</port><bind-address>127.0.0.1</bind-address><ssl>1</ssl></listen-socket>"
    tls_cert="<ssl-certificate>$pem</ssl-certificate>"
    loglevel=2
  fi
  mkdir -p "$TMP/ice/log"; chmod -R 777 "$TMP/ice"
  cat > "$TMP/ice/icecast.xml" <<XML
<icecast>
  <limits><clients>$((N + 100))</clients><sources>2</sources><queue-size>524288</queue-size><burst-size>4096</burst-size></limits>
  <authentication><source-password>benchsrc</source-password><admin-user>admin</admin-user><admin-password>benchadm</admin-password></authentication>
  <listen-socket><port>$port</port><bind-address>127.0.0.1</bind-address></listen-socket>
  $tls_socket
  <fileserve>0</fileserve>
  <paths><logdir>$TMP/ice/log</logdir><basedir>$TMP/ice</basedir><webroot>$TMP/ice</webroot><adminroot>$TMP/ice</adminroot>$tls_cert</paths>
  <logging><errorlog>error.log</errorlog><loglevel>$loglevel</loglevel></logging>
  <security><chroot>0</chroot><changeowner><user>nobody</user><group>nogroup</group></changeowner></security>
</icecast>
XML
  icecast2 -c "$TMP/ice/icecast.xml" >/dev/null 2>&1 &
  PIDS+=($!); ICE_PID=$!
  sleep 1
  ffmpeg -v error -re -f lavfi -i "sine=frequency=440:sample_rate=48000" -ac 1 -c:a libopus -b:a 32k -frame_duration 20 -page_duration 100000 \
    -content_type audio/ogg -f ogg "icecast://source:benchsrc@127.0.0.1:$port/amphi.opus" 2>"$TMP/ffmpeg.log" &
  PIDS+=($!)
  sleep 3
}
