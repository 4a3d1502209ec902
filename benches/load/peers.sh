# The systems of the load harness, configured for the same job: sourced by
# run.sh (wall clock) and instructions.sh (callgrind), so that both measure
# exactly the same nginx, HAProxy and moat. Source it, then:
#   nginx_has_stream      0 when nginx can load or has the stream module (sets
#                         NGINX_STREAM_LOAD)
#   write_peers           needs WORK, MOAT_BIN, TOOL (loadtool.py) and
#                         NGINX_KEEPALIVE; allocates the ports P_*, writes
#                         certificates to $CERTS and the configurations
#                         $WORK/backend/nginx.conf, $WORK/nginx/nginx.conf,
#                         $WORK/haproxy.cfg, $WORK/moat.toml, and checks each
#                         with its own tool.
#   port_of TEST SYSTEM   the port a test reaches a system on (after
#                         write_peers), or nothing when the pair is not measured
# The stream module is either a loadable module (Debian: libnginx-mod-stream)
# or compiled in.
NGINX_STREAM_LOAD=""
nginx_has_stream() {
  command -v nginx >/dev/null || return 1
  local so
  for so in /usr/lib/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so; do
    if [ -e "$so" ]; then NGINX_STREAM_LOAD="load_module $so;"; return 0; fi
  done
  nginx -V 2>&1 | tr ' ' '\n' | grep -qx -- '--with-stream'
}

write_peers() {
read -r P_B_HTTP P_B_TLS P_IPERF P_M_TLS P_M_HTTP P_M_L4TLS P_M_L4 P_M_ADMIN \
  P_N_TLS P_N_HTTP P_N_L4TLS P_N_L4 P_H_TLS P_H_HTTP P_H_L4TLS P_H_L4 \
  P_S_MOAT P_S_NGINX P_S_HAPROXY P_F_TLS P_F_HTTP <<<"$($TOOL ports 21)"

CERTS="$WORK/certs"
"$MOAT_BIN" certs dev "$CERTS" >/dev/null
cat "$CERTS/server.pem" "$CERTS/server.key" >"$CERTS/haproxy.pem"

# -- the backend: a separate nginx, one worker, a fixed 200 "ok\n" with
#    keep-alive; its TLS listener is "direct" for the TLS tests.
mkdir -p "$WORK/backend"
cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/backend/nginx.pid;
worker_rlimit_nofile 16384;
events { worker_connections 8000; }
http {
  access_log off;
  default_type text/plain;
  keepalive_requests 1000000000;
  keepalive_timeout 120s;
  server {
    listen 127.0.0.1:$P_B_HTTP backlog=4096;
    location / { return 200 "ok\n"; }
  }
  server {
    listen 127.0.0.1:$P_B_TLS ssl http2 backlog=4096;
    ssl_certificate $CERTS/server.pem;
    ssl_certificate_key $CERTS/server.key;
    ssl_protocols TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    location / { return 200 "ok\n"; }
  }
}
EOF

# -- nginx as the gateway
mkdir -p "$WORK/nginx"
NGINX_HEADERS='
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header Forwarded "for=$remote_addr;proto=$scheme";
      add_header X-Content-Type-Options nosniff always;
      add_header X-Frame-Options SAMEORIGIN always;'
cat >"$WORK/nginx/nginx.conf" <<EOF
$NGINX_STREAM_LOAD
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
worker_rlimit_nofile 16384;
events { worker_connections 8000; }
http {
  access_log off;
  keepalive_requests 1000000000;
  keepalive_timeout 120s;
  upstream backend {
    server 127.0.0.1:$P_B_HTTP;
    keepalive $NGINX_KEEPALIVE;
    keepalive_requests 1000000000;
  }
  server {
    listen 127.0.0.1:$P_N_TLS ssl http2 backlog=4096;
    ssl_certificate $CERTS/server.pem;
    ssl_certificate_key $CERTS/server.key;
    ssl_protocols TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    allow 127.0.0.0/8;
    deny all;
    location / {
      $NGINX_HEADERS
      add_header Strict-Transport-Security "max-age=31536000" always;
    }
  }
  server {
    listen 127.0.0.1:$P_N_HTTP backlog=4096;
    allow 127.0.0.0/8;
    deny all;
    location / {
      $NGINX_HEADERS
    }
  }
}
stream {
  upstream iperf { server 127.0.0.1:$P_IPERF; }
  server {
    listen 127.0.0.1:$P_N_L4TLS ssl;
    ssl_certificate $CERTS/server.pem;
    ssl_certificate_key $CERTS/server.key;
    ssl_protocols TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    allow 127.0.0.0/8;
    deny all;
    proxy_pass iperf;
  }
  server {
    listen 127.0.0.1:$P_N_L4;
    allow 127.0.0.0/8;
    deny all;
    proxy_pass iperf;
  }
}
EOF

# -- HAProxy as the gateway
cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
  tune.ssl.cachesize 0
  ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets

defaults
  mode http
  timeout connect 5s
  timeout client 10m
  timeout server 10m
  timeout http-keep-alive 120s
  timeout http-request 10s
  option http-keep-alive
  maxconn 8000

frontend fe_tls
  bind 127.0.0.1:$P_H_TLS ssl crt $CERTS/haproxy.pem alpn h2,http/1.1
  tcp-request connection reject unless { src 127.0.0.0/8 }
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header Forwarded for=%[src];proto=https
  http-response set-header Strict-Transport-Security "max-age=31536000"
  http-response set-header X-Content-Type-Options nosniff
  http-response set-header X-Frame-Options SAMEORIGIN
  default_backend be_http

frontend fe_plain
  bind 127.0.0.1:$P_H_HTTP
  tcp-request connection reject unless { src 127.0.0.0/8 }
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header Forwarded for=%[src];proto=http
  http-response set-header X-Content-Type-Options nosniff
  http-response set-header X-Frame-Options SAMEORIGIN
  default_backend be_http

backend be_http
  http-reuse always
  server backend 127.0.0.1:$P_B_HTTP

listen l4_tls
  mode tcp
  bind 127.0.0.1:$P_H_L4TLS ssl crt $CERTS/haproxy.pem
  tcp-request connection reject unless { src 127.0.0.0/8 }
  server iperf 127.0.0.1:$P_IPERF

listen l4_plain
  mode tcp
  bind 127.0.0.1:$P_H_L4
  tcp-request connection reject unless { src 127.0.0.0/8 }
  server iperf 127.0.0.1:$P_IPERF
EOF

# -- moat
cat >"$WORK/moat.toml" <<EOF
[gateway]
audit_log = "$WORK/moat-audit.log"
shutdown_grace = "1s"

[admin]
listen = "127.0.0.1:$P_M_ADMIN"

[networks.loopback]
cidrs = ["127.0.0.0/8"]

[[device]]
id = "bench-backend"
name = "Load benchmark backend"

  [[device.service]]
  name = "https"
  protocol = "http"
  listen = "127.0.0.1:$P_M_TLS"
  upstream = "127.0.0.1:$P_B_HTTP"
  allow = ["loopback"]
  max_connections = 8000
    [device.service.tls]
    certificates = [{ cert = "$CERTS/server.pem", key = "$CERTS/server.key" }]
    min_version = "1.3"
    session_resumption = false   # like nginx and HAProxy here: full handshakes only
    [device.service.http]
    audit_allowed = false

  [[device.service]]
  name = "http"
  protocol = "http"
  listen = "127.0.0.1:$P_M_HTTP"
  upstream = "127.0.0.1:$P_B_HTTP"
  allow = ["loopback"]
  max_connections = 8000
  plaintext = true
    [device.service.http]
    audit_allowed = false

  [[device.service]]
  name = "tcp-tls"
  protocol = "tcp"
  listen = "127.0.0.1:$P_M_L4TLS"
  upstream = "127.0.0.1:$P_IPERF"
  allow = ["loopback"]
  max_connections = 8000
    [device.service.tls]
    certificates = [{ cert = "$CERTS/server.pem", key = "$CERTS/server.key" }]
    min_version = "1.3"

  [[device.service]]
  name = "tcp"
  protocol = "tcp"
  listen = "127.0.0.1:$P_M_L4"
  upstream = "127.0.0.1:$P_IPERF"
  allow = ["loopback"]
  max_connections = 8000
  plaintext = true
EOF

nginx -t -q -p "$WORK/backend/" -e "$WORK/backend/error.log" -c "$WORK/backend/nginx.conf"
nginx -t -q -p "$WORK/nginx/" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf"
haproxy -c -q -f "$WORK/haproxy.cfg"
"$MOAT_BIN" check -c "$WORK/moat.toml" >/dev/null
}

port_of() { # TEST SYSTEM -> port, or nothing when the pair is not measured
  case "$1:$2" in
    h1_tls:direct | h2_tls:direct | handshake*:direct) echo "$P_B_TLS" ;;
    h1_tls:moat | h2_tls:moat | handshake*:moat) echo "$P_M_TLS" ;;
    h1_tls:nginx | h2_tls:nginx | handshake*:nginx) echo "$P_N_TLS" ;;
    h1_tls:haproxy | h2_tls:haproxy | handshake*:haproxy) echo "$P_H_TLS" ;;
    h1_tls:floor | h2_tls:floor | handshake*:floor) echo "$P_F_TLS" ;;
    h1_plain:direct) echo "$P_B_HTTP" ;;
    h1_plain:moat) echo "$P_M_HTTP" ;;
    h1_plain:nginx) echo "$P_N_HTTP" ;;
    h1_plain:haproxy) echo "$P_H_HTTP" ;;
    h1_plain:floor) echo "$P_F_HTTP" ;;
    l4_tls:moat) echo "$P_S_MOAT" ;;
    l4_tls:nginx) echo "$P_S_NGINX" ;;
    l4_tls:haproxy) echo "$P_S_HAPROXY" ;;
    l4_plain:direct) echo "$P_IPERF" ;;
    l4_plain:moat) echo "$P_M_L4" ;;
    l4_plain:nginx) echo "$P_N_L4" ;;
    l4_plain:haproxy) echo "$P_H_L4" ;;
  esac
}
