#!/usr/bin/env bash
# Development credentials for the secured broker (deploy/mosquitto/mosquitto.conf):
# a CA, the broker's server certificate, the hub's client certificate, a password per user
# (hashed with mosquitto_passwd) and the ACL with one fleet line per device.
#
#   deploy/mosquitto/make-dev-credentials.sh [options] OUT_DIR
#     -n N            N devices named device-001 ... (default 2, when no -d is given)
#     -c CLASS        their device class (default generic, the agent's default)
#     -d ID[:CLASS]   a device by name (repeatable); its class defaults to -c
#     -s SAN          another name for the server certificate, e.g. DNS:mosquitto or
#                     IP:10.0.0.5 (repeatable); localhost and 127.0.0.1 are always in it
#     -u USER         the hubs' username (default hub; the ACL names it)
#     -D DAYS         certificate lifetime (default 365)
#
# OUT_DIR gets:
#   certs/ca.crt certs/server.crt certs/server.key   the broker's TLS files (mosquitto.conf: /mosquitto/certs/)
#   config/passwd config/acl                         password file and ACL (mosquitto.conf: /mosquitto/config/)
#   hub/hub.crt hub/hub.key                          the hubs' client certificate (listener 8884)
#   passwords/<user>                                 each user's password in clear, for its config
#   devices.tsv                                      device id, device class
#   ca/ca.key                                        the CA's key; keep it off every machine but this one
# The mounted files are world-readable so that containers running as other users can read them:
# these are development credentials. Production keeps them in Secrets (docs/deploy.md).
set -euo pipefail

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

count=2
default_class=generic
hub_user=hub
days=365
devices=()
sans=()
while getopts "n:c:d:s:u:D:h" opt; do
  case "$opt" in
    n) count=$OPTARG ;;
    c) default_class=$OPTARG ;;
    d) devices+=("$OPTARG") ;;
    s) sans+=("$OPTARG") ;;
    u) hub_user=$OPTARG ;;
    D) days=$OPTARG ;;
    h) usage 0 ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || usage
out=$1

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
base_acl="$here/acl"
passwd_bin=$(command -v mosquitto_passwd || true)
[ -n "$passwd_bin" ] || { echo "mosquitto_passwd not found (apt-get install mosquitto)" >&2; exit 1; }
command -v openssl >/dev/null || { echo "openssl not found" >&2; exit 1; }
case "$count" in ''|*[!0-9]*) echo "-n needs a number, got '$count'" >&2; exit 2 ;; esac
case "$days" in ''|*[!0-9]*) echo "-D needs a number, got '$days'" >&2; exit 2 ;; esac

if [ ${#devices[@]} -eq 0 ]; then
  for i in $(seq 1 "$count"); do devices+=("$(printf 'device-%03d' "$i")"); done
fi

# The same rules as protocols.validate_device_id, plus the names the ACL gives a meaning.
check_name() {
  local what=$1 value=$2
  if [ -z "$value" ] || [ ${#value} -gt 64 ] || ! [[ "$value" =~ ^[A-Za-z0-9._-]+$ ]]; then
    echo "$what '$value' must be 1-64 letters, digits, '.', '_' or '-'" >&2; exit 2
  fi
}
check_name "hub user" "$hub_user"
check_name "device class" "$default_class"

mkdir -p "$out"/{certs,config,hub,passwords,ca}
chmod 700 "$out/ca" "$out/passwords"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# -- certificates ---------------------------------------------------------------------------
openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days "$days" \
  -subj "/CN=hybrid-inference development CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout "$out/ca/ca.key" -out "$out/certs/ca.crt" 2>/dev/null
chmod 600 "$out/ca/ca.key"

san="DNS:localhost,IP:127.0.0.1"
for extra in "${sans[@]+"${sans[@]}"}"; do san="$san,$extra"; done

issue() {  # name CN extendedKeyUsage [SAN]
  local name=$1 cn=$2 usage=$3 alt=${4:-}
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [ -z "$alt" ] || echo "subjectAltName=$alt"
  } >"$tmp/$name.ext"
  openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=$cn" \
    -keyout "$tmp/$name.key" -out "$tmp/$name.csr" 2>/dev/null
  openssl x509 -req -in "$tmp/$name.csr" -CA "$out/certs/ca.crt" -CAkey "$out/ca/ca.key" \
    -CAcreateserial -CAserial "$tmp/ca.srl" -days "$days" -sha256 \
    -extfile "$tmp/$name.ext" -out "$tmp/$name.crt" 2>/dev/null
}
issue server localhost serverAuth "$san"
mv "$tmp/server.crt" "$tmp/server.key" "$out/certs/"
issue hub "$hub_user" clientAuth
mv "$tmp/hub.crt" "$tmp/hub.key" "$out/hub/"
chmod 644 "$out"/certs/* "$out"/hub/*

# -- passwords and ACL ----------------------------------------------------------------------
: >"$tmp/passwd"
: >"$out/devices.tsv"
cp "$base_acl" "$tmp/acl"
declare -A seen=([$hub_user]=1)
add_user() {
  local user=$1 password
  password=$(openssl rand -hex 16)
  printf '%s' "$password" >"$out/passwords/$user"
  chmod 600 "$out/passwords/$user"
  printf '%s:%s\n' "$user" "$password" >>"$tmp/passwd"
}
add_user "$hub_user"
for spec in "${devices[@]}"; do
  id=${spec%%:*}
  class=$default_class
  [ "$id" = "$spec" ] || class=${spec#*:}
  check_name "device id" "$id"
  check_name "device class" "$class"
  if [ "$id" = fleet ]; then echo "device id 'fleet' is reserved for fleet topics" >&2; exit 2; fi
  if [ -n "${seen[$id]:-}" ]; then echo "user '$id' appears twice" >&2; exit 2; fi
  seen[$id]=1
  add_user "$id"
  printf '%s\t%s\n' "$id" "$class" >>"$out/devices.tsv"
  printf '\nuser %s\ntopic read hybrid/v1/fleet/%s/models\n' "$id" "$class" >>"$tmp/acl"
done
# -U hashes the clear passwords in place, so none of them ever appears on a command line.
"$passwd_bin" -U "$tmp/passwd"
install -m 644 "$tmp/passwd" "$out/config/passwd"
install -m 644 "$tmp/acl" "$out/config/acl"

echo "credentials for '$hub_user' and ${#devices[@]} device(s) in $out"
