#!/bin/bash
# Container health check for the wsgate image: GET a health path on the
# metrics port with bash's /dev/tcp (the runtime image has no curl).
#   wsgate-healthcheck [PATH]     PATH defaults to /readyz
# WSGATE_HEALTH_PORT overrides the port (default 9090).
set -eu
path=${1:-/readyz}
port=${WSGATE_HEALTH_PORT:-9090}
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
IFS= read -r status <&3 || status=""
exec 3<&-
case $status in
    "HTTP/1."?" 200 "*) exit 0 ;;
    *) echo "wsgate-healthcheck: ${path}: ${status:-no answer}" >&2; exit 1 ;;
esac
