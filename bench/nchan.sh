#!/usr/bin/env bash
# Starts nginx with nchan on 127.0.0.1:PORT in the foreground, as the peer of
# the benchmarks: `/pub?id=CHANNEL` publishes, `/sub/CHANNEL` subscribes with
# EventSource. Installs Debian's nginx-light and libnginx-mod-nchan if
# missing. Two workers, like herald's two cores.
set -euo pipefail
port="${1:?usage: bench/nchan.sh PORT}"
if [[ ! -e /usr/lib/nginx/modules/ngx_nchan_module.so ]]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light libnginx-mod-nchan >/dev/null
fi
dir=$(mktemp -d)
cat >"$dir/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 2;
worker_rlimit_nofile 20000;
daemon off;
pid $dir/nginx.pid;
error_log stderr warn;
events { worker_connections 19000; }
http {
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path $dir;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location = /pub { nchan_publisher; nchan_channel_id \$arg_id; nchan_message_buffer_length 16; }
        location ~ ^/sub/(.+)$ { nchan_subscriber eventsource; nchan_channel_id \$1; }
    }
}
CONF
exec nginx -p "$dir" -c "$dir/nginx.conf"
