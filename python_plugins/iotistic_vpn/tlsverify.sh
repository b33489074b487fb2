#!/bin/sh
# OpenVPN's --tls-crypt-v2-verify command on a gateway: a revoked device's packets are dropped
# before TLS.
#
# OpenVPN runs it for the first packet of every connection attempt that carries a tls-crypt-v2
# client key, and waits for it in its one thread (src/openvpn/tls_crypt.c,
# tls_crypt_v2_verify_metadata), with metadata_type (0 USER, 1 TIMESTAMP) and metadata_file (the
# metadata after its type byte) in its environment. Exit 0 admits the packet; anything else
# drops it, with no answer to the device. POSIX sh, no other process but one `wc`: about 1 ms a
# run where a Python interpreter's start costs 13-25 ms (bench/bench_fleet.py: a 1,000-device
# storm had each instance wait for one Python per handshake).
#
# A device's key carries USER metadata urn:iotistic:<customer>:<device> (tlsverify.identity,
# pki.tlscrypt); the gateway agent keeps one empty file per revoked device id in REVOKED_DIR
# (crldir.RevokedDevices). Fail closed: metadata not exactly of that form (the id rules of
# identifiers.py, which tests/unit/test_tlsverify.py holds this script to), or a directory that
# cannot be read, is refused. A TIMESTAMP key (OpenVPN's default, made before keys named their
# device) names no device: admitted only with --timestamp-keys admit; its certificate is then
# checked as before (crl-verify, the agent).
#
# usage: tlsverify.sh REVOKED_DIR [--timestamp-keys admit|refuse]
LC_ALL=C
export LC_ALL

refuse() {
    # One line in the gateway's journal (OpenVPN's stderr) per refused attempt.
    echo "tls-crypt-v2-verify: refused: $*" >&2
    exit 1
}

# A DNS-label-like id: MIN..MAX characters of a-z, 0-9 and '-', first and last a letter or digit.
valid_id() { # VALUE MIN MAX
    [ "${#1}" -ge "$2" ] && [ "${#1}" -le "$3" ] || return 1
    case $1 in
        *[!a-z0-9-]* | -* | *-) return 1 ;;
    esac
    return 0
}

revoked_dir=$1
timestamp_keys=refuse
case $# in
    1) ;;
    3) [ "$2" = --timestamp-keys ] && { [ "$3" = admit ] || [ "$3" = refuse ]; } || {
        echo "usage: tlsverify.sh REVOKED_DIR [--timestamp-keys admit|refuse]" >&2
        exit 2
    }
       timestamp_keys=$3 ;;
    *) echo "usage: tlsverify.sh REVOKED_DIR [--timestamp-keys admit|refuse]" >&2
       exit 2 ;;
esac

[ -n "${metadata_file:-}" ] || refuse "no metadata_file in the environment"
[ -r "$metadata_file" ] || refuse "metadata file: cannot be read"
size=$(wc -c < "$metadata_file") || refuse "metadata file: cannot be read"

case ${metadata_type:-} in
    0)
        [ "$size" -le 733 ] || refuse "USER metadata of $size bytes is too long"
        IFS= read -r metadata < "$metadata_file"
        # What read kept must be the whole file: no newline, no byte the shell would drop.
        [ "${#metadata}" -eq "$size" ] ||
            refuse "USER metadata of $size bytes is not urn:iotistic:<customer>:<device>"
        rest=${metadata#urn:iotistic:}
        customer=${rest%%:*}
        device=${rest#*:}
        if [ "$rest" = "$metadata" ] || [ "$customer" = "$rest" ] ||
            ! valid_id "$customer" 2 32 || ! valid_id "$device" 1 63; then
            refuse "USER metadata '$(printf '%.80s' "$metadata")' is not urn:iotistic:<customer>:<device>"
        fi
        if [ -e "$revoked_dir/$device" ]; then
            refuse "device $customer/$device is revoked"
        fi
        [ -d "$revoked_dir" ] && [ -x "$revoked_dir" ] ||
            refuse "device $customer/$device: $revoked_dir is not a directory it may search"
        exit 0
        ;;
    1)
        [ "$size" -eq 8 ] || refuse "TIMESTAMP metadata of $size bytes, not 8"
        [ "$timestamp_keys" = admit ] || refuse "a TIMESTAMP key names no device (--timestamp-keys refuse)"
        exit 0
        ;;
    *)
        refuse "metadata type '${metadata_type:-}' is neither 0 (USER) nor 1 (TIMESTAMP)"
        ;;
esac
