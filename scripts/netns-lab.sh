#!/usr/bin/env bash
# (casd: taken from shared/reference/netns-lab.sh, the lab measured on these machines; see docs in README.)
# netns-lab.sh - several "hosts" on ONE Linux machine, for cluster chaos tests.
#
# Layout (nothing is created in, or routed to, the root namespace):
#
#   netns $P-sw : bridge br0 (no IP, IPv6 off, IGMP snooping off, STP off)
#                 ports p1..pN  <- all cuts / loss / delay are applied HERE
#   netns $P-hI : lo + eth0 (veth peer of pI), 198.51.100.I/24 (TEST-NET-2),
#                 fdc5:7a1b:9e42:1::I/64 (ULA), route 224.0.0.0/4 dev eth0,
#                 no default route: any address outside the lab is unreachable.
#
# Needs root, iproute2 (ip, bridge, tc). Cuts and loss: nftables (nft) if
# installed, else tc (u32 / classic-BPF filters redirecting to a down ifb
# device, i.e. a black hole: no extra package at all). Delay: iptables +
# python3 for delay when the kernel has no sch_netem (as on this CI machine).
#
# Subcommands (I = host number, A/B = comma lists like 1,2):
#   up N                 create the switch namespace and hosts h1..hN
#   down                 kill every process in the lab namespaces, delete them
#   run I CMD...         start CMD in host I in the background (own session),
#                        log to $STATE/hI.log, print + record its PID
#   exec I CMD...        run CMD in host I in the foreground
#   kill I [SIG]         signal (default KILL) every process in host I
#   restart I            kill -9 host I, then re-run its last `run` command
#   crash I              isolate I, then kill -9 (peers see silence, not FIN/RST
#                        as after a bare kill); later: heal + restart I
#   isolate I | cut I    drop all traffic between host I and every other host
#   partition A B [C..]  drop traffic between the groups (both directions)
#   block A B            ONE-WAY: drop frames sent by hosts A to hosts B
#   heal                 remove every cut / block (impairments stay)
#   netem I [delay D [J]] [loss P%]   impair what host I SENDS (D,J in ms/s)
#   netem I clear        remove host I's impairments
#   addr I | seeds [PORT] | ns I | status | selftest
#   probe I mrecv G PORT S | msend G PORT N | urecv PORT S | usend H PORT N
#         | tserve PORT S | tconn H PORT TIMEOUT   (bounded python3 probes)
#
# Environment: LAB_PREFIX (default lab; lets parallel labs coexist),
# LAB_STATE (default /tmp/netns-lab-$LAB_PREFIX), LAB_CUT=auto|nft|tc,
# LAB_KEEP_LOGS=1 keeps $STATE after `down`, LAB_DELAY_MAX_S (delayer lifetime, 3600).
set -euo pipefail

P=${LAB_PREFIX:-lab}
SW="$P-sw"
STATE=${LAB_STATE:-/tmp/netns-lab-$P}
NET4=${LAB_NET4:-198.51.100}          # RFC 5737 TEST-NET-2: documentation only
NET6=${LAB_NET6:-fdc5:7a1b:9e42:1}    # RFC 4193 ULA /64
MAXN=200

die() { echo "netns-lab: $*" >&2; exit 1; }
say() { echo "netns-lab: $*" >&2; }
hns() { echo "$P-h$1"; }
swx() { ip netns exec "$SW" "$@"; }
nhosts() { [[ -s $STATE/n ]] || die "lab '$P' is not up"; cat "$STATE/n"; }
mode() { cat "$STATE/cut"; }
need_host() {
  local n; n=$(nhosts)
  [[ ${1:-} =~ ^[0-9]+$ ]] && (( $1 >= 1 && $1 <= n )) || die "no host '${1:-}' (1..$n)"
}
hosts_of() {  # "1,3" -> "1 3" (validated); "all" -> 1..N
  local n; n=$(nhosts)
  if [[ $1 == all ]]; then seq 1 "$n" | tr '\n' ' '; return; fi
  local x; for x in ${1//,/ }; do need_host "$x"; printf '%s ' "$x"; done
}
lab_namespaces() { ip netns list | awk '{print $1}' | grep -E "^$P-(sw|h[0-9]+)$" || true; }
wait_ns_empty() {  # bounded: at most 5 s
  local ns=$1 t
  for ((t = 0; t < 50; t++)); do
    [[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && return 0
    sleep 0.1
  done
  say "processes still alive in $ns: $(ip netns pids "$ns" | tr '\n' ' ')"; return 1
}

# ---------------------------------------------------------------- up / down
cmd_up() {
  local n=${1:-}
  [[ $n =~ ^[0-9]+$ ]] && (( n >= 1 && n <= MAXN )) || die "usage: up N (1..$MAXN)"
  [[ -e $STATE/n ]] && die "lab '$P' already up; run down first"
  [[ -n $(lab_namespaces) ]] && die "namespaces $P-* left over; run down first"
  local cut=${LAB_CUT:-auto}
  if [[ $cut == auto ]]; then
    if command -v nft >/dev/null; then cut=nft; else cut=tc; fi
  fi
  [[ $cut == nft || $cut == tc ]] || die "LAB_CUT must be auto, nft or tc"
  [[ $cut == nft ]] && ! command -v nft >/dev/null && die "nft not installed (apt-get install nftables)"
  mkdir -p "$STATE"; echo "$cut" > "$STATE/cut"
  trap 'say "up failed, removing what it made"; cmd_down' EXIT   # no half-built lab

  ip netns add "$SW"
  ip -n "$SW" link set lo up
  # The switch takes no part in IP: no link-local addresses, no RS/MLD of its own.
  swx sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  # (This kernel has no CONFIG_BRIDGE_VLAN_FILTERING: no vlan_filtering options.)
  ip -n "$SW" link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
  ip -n "$SW" link set br0 up

  local i h
  for ((i = 1; i <= n; i++)); do
    h=$(hns "$i")
    ip netns add "$h"
    # Create the pair inside the switch namespace, peer straight into the host.
    ip -n "$SW" link add "p$i" type veth peer name eth0 netns "$h"
    ip -n "$SW" link set "p$i" master br0
    ip -n "$SW" link set "p$i" up
    ip -n "$h" link set lo up
    ip -n "$h" addr add "$NET4.$i/24" dev eth0
    ip -n "$h" addr add "$NET6::$i/64" dev eth0 nodad   # nodad: usable at once
    ip -n "$h" link set eth0 up
    # Without a multicast (or default) route, IP_ADD_MEMBERSHIP on INADDR_ANY and
    # sendto(239.x) fail with ENODEV/ENETUNREACH. We add no default route.
    ip -n "$h" route add 224.0.0.0/4 dev eth0
  done
  echo "$n" > "$STATE/n"
  helper_file

  if [[ $cut == nft ]]; then
    swx nft -f - <<'EOF'
table bridge lab {
  set cut { type ifname . ifname; }            # (from port . to port) pairs dropped
  chain chaos {
    type filter hook forward priority 0; policy accept;
    ether type arp accept                    # keep ARP/ND so one-way cuts stay one-way
    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
    iifname . oifname @cut counter drop
    jump impair
  }
  chain impair { }
}
EOF
  else
    # tc mode: bh0 is an ifb device left DOWN; "mirred redirect" to it = drop
    # (this kernel lacks act_gact, so tc has no plain "action drop").
    ip -n "$SW" link add bh0 type ifb
    for ((i = 1; i <= n; i++)); do swx tc qdisc add dev "p$i" clsact; done
  fi
  # Probe once whether the kernel has sch_netem (this CI kernel does not).
  if swx tc qdisc add dev lo root netem delay 0ms 2>/dev/null; then
    swx tc qdisc del dev lo root; echo tc > "$STATE/netem"
  else
    echo emulated > "$STATE/netem"
  fi
  trap - EXIT
  say "up: $n hosts ($P-h1..$P-h$n), switch $SW, cuts via $cut, netem via $(cat "$STATE/netem")"
}

cmd_down() {
  local ns pids
  for ns in $(lab_namespaces); do
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    [[ -n ${pids// /} ]] && kill -KILL $pids 2>/dev/null || true
  done
  for ns in $(lab_namespaces); do wait_ns_empty "$ns" || true; ip netns del "$ns"; done
  if [[ ${LAB_KEEP_LOGS:-0} == 1 ]]; then rm -f "$STATE/n"; else rm -rf "$STATE"; fi
  say "down: lab '$P' removed"
}

# ---------------------------------------------------------------- processes
cmd_run() {
  local i=${1:-}; need_host "$i"; shift
  (( $# )) || die "usage: run I CMD..."
  local h; h=$(hns "$i")
  printf '%s\0' "$@" > "$STATE/h$i.cmd"
  echo "=== $(date +%T.%N) run: $*" >> "$STATE/h$i.log"
  # setsid: own session/process group, so the caller's job control or a
  # Ctrl-C never reaches it; `ip netns exec` execs, so $! is CMD's own PID.
  LAB_HOST=$i LAB_ADDR=$NET4.$i LAB_ADDR6=$NET6::$i \
    setsid ip netns exec "$h" "$@" >> "$STATE/h$i.log" 2>&1 < /dev/null &
  local pid=$!; disown "$pid"
  echo "$pid" >> "$STATE/h$i.pids"
  echo "$pid"
}
cmd_exec() { local i=${1:-}; need_host "$i"; shift; ip netns exec "$(hns "$i")" "$@"; }
cmd_kill() {
  local i=${1:-}; need_host "$i"; local sig=${2:-KILL} h pids
  h=$(hns "$i"); pids=$(ip netns pids "$h" | tr '\n' ' ')
  [[ -z ${pids// /} ]] && { say "h$i: nothing running"; return 0; }
  kill -s "$sig" $pids 2>/dev/null || true
  if [[ $sig == KILL || $sig == 9 ]]; then wait_ns_empty "$h"; fi
  say "h$i: sent SIG$sig to $pids"
}
cmd_restart() {
  local i=${1:-}; need_host "$i"
  [[ -s $STATE/h$i.cmd ]] || die "h$i: nothing was run there"
  cmd_kill "$i" KILL
  local args; mapfile -d '' -t args < "$STATE/h$i.cmd"
  cmd_run "$i" "${args[@]}"
}

# ---------------------------------------------------------------- cuts
block_pairs() {  # args: "a:b" = drop frames sent by host a to host b
  (( $# )) || return 0
  local pr a b
  if [[ $(mode) == nft ]]; then
    local el=""
    for pr in "$@"; do el+="\"p${pr%%:*}\" . \"p${pr##*:}\", "; done
    swx nft add element bridge lab cut "{ ${el%, } }"
  else  # tc: on the egress of b's port, drop IPv4 from a, and IPv6 TCP/UDP from a
    for pr in "$@"; do
      a=${pr%%:*} b=${pr##*:}
      echo "filter add dev p$b egress pref 10 protocol ip u32 match ip src $NET4.$a/32 action mirred egress redirect dev bh0"
      for proto in 6 17; do
        echo "filter add dev p$b egress pref 11 protocol ipv6 u32 match ip6 src $NET6::$a/128 match ip6 protocol $proto 0xff action mirred egress redirect dev bh0"
      done
    done | swx tc -batch -
  fi
}
cmd_block() {  # one-way
  (( $# == 2 )) || die "usage: block A B   (drop what A sends to B)"
  hosts_of "$1" > /dev/null; hosts_of "$2" > /dev/null
  local a b pairs=()
  for a in $(hosts_of "$1"); do for b in $(hosts_of "$2"); do
    (( a == b )) || pairs+=("$a:$b"); done; done
  block_pairs "${pairs[@]}"
  say "blocked ${1} -> ${2}"
}
cmd_partition() {  # groups: every pair in different groups is cut both ways
  (( $# >= 2 )) || die "usage: partition A B [C...]"
  local a b pairs=() groups=("$@") x y
  for x in "$@"; do hosts_of "$x" > /dev/null; done
  for ((x = 0; x < ${#groups[@]}; x++)); do for ((y = 0; y < ${#groups[@]}; y++)); do
    (( x == y )) && continue
    for a in $(hosts_of "${groups[x]}"); do for b in $(hosts_of "${groups[y]}"); do
      (( a == b )) || pairs+=("$a:$b"); done; done
  done; done
  block_pairs "${pairs[@]}"
  say "partitioned: $*"
}
cmd_isolate() {
  local i=${1:-}; need_host "$i"
  local others; others=$(hosts_of all | tr ' ' '\n' | grep -vx "$i" | paste -sd, -)
  [[ -n $others ]] && cmd_partition "$i" "$others"
}
list_cuts() {  # one "hA->hB" line per dropped direction
  local i n; n=$(nhosts)
  if [[ $(mode) == nft ]]; then
    swx nft list set bridge lab cut | tr -d ' \t\n' | grep -o '"p[0-9]*"\."p[0-9]*"' |
      sed 's/"p\([0-9]*\)"\."p\([0-9]*\)"/h\1->h\2/' || true
  else
    for ((i = 1; i <= n; i++)); do
      swx tc filter show dev "p$i" egress pref 10 | grep -o 'match [0-9a-f]*/ffffffff at 12' |
        while read -r _ m _ _; do echo "h$((16#${m:6:2}))->h$i"; done
    done
  fi
}
cmd_heal() {
  if [[ $(mode) == nft ]]; then swx nft flush set bridge lab cut
  else
    local i n; n=$(nhosts)
    for ((i = 1; i <= n; i++)); do
      swx tc filter del dev "p$i" egress pref 10 2>/dev/null || true
      swx tc filter del dev "p$i" egress pref 11 2>/dev/null || true
    done
  fi
  say "healed"
}

# ---------------------------------------------------------------- impairments
to_ms() { # 50ms | 1s | 0.5s | 50 -> integer ms
  local v=$1
  case $v in
    *ms) v=${v%ms} ;;
    *s) v=$(awk -v s="${v%s}" 'BEGIN{printf "%d", s*1000}') ;;
  esac
  [[ $v =~ ^[0-9]+$ ]] || die "bad time '$1'"; echo "$v"
}
cmd_netem() {
  local i=${1:-}; need_host "$i"; shift
  local delay=0 jitter=0 loss="" h; h=$(hns "$i")
  if [[ $(cat "$STATE/netem") == tc ]]; then      # real netem where the kernel has it
    if [[ ${1:-} == clear ]]; then ip netns exec "$h" tc qdisc del dev eth0 root 2>/dev/null || true
    else ip netns exec "$h" tc qdisc replace dev eth0 root netem "$@"; fi
    return
  fi
  if [[ ${1:-} == clear ]]; then netem_clear "$i"; say "h$i: impairments cleared"; return; fi
  while (( $# )); do
    case $1 in
      delay) delay=$(to_ms "${2:?}"); shift 2
             if [[ ${1:-} =~ ^[0-9.]+m?s?$ && ${1:-} != loss ]]; then jitter=$(to_ms "$1"); shift; fi ;;
      loss)  loss=${2:?}; loss=${loss%\%}; shift 2 ;;
      *) die "netem: unknown '$1' (this kernel has no sch_netem: only delay D [J] and loss P%)" ;;
    esac
  done
  netem_clear "$i"    # the new setting replaces the old one
  if [[ -n $loss ]]; then
    local per10k; per10k=$(awk -v p="$loss" 'BEGIN{printf "%d", p*100}')
    (( per10k >= 0 && per10k <= 10000 )) || die "bad loss '$loss'"
    if [[ $(mode) == nft ]]; then
      swx nft add rule bridge lab impair iifname "\"p$i\"" numgen random mod 10000 "<" "$per10k" counter drop
    elif (( per10k > 0 )); then
      # classic BPF: A = random u32; match (-> black hole) iff A <= T, T = p * 2^32 - 1
      local t; t=$(awk -v k="$per10k" 'BEGIN{printf "%.0f", k / 10000 * 4294967296 - 1}')
      swx tc filter add dev "p$i" ingress pref 20 protocol all bpf \
        bytecode "4,32 0 0 4294963256,37 0 1 $t,6 0 0 0,6 0 0 4294967295" \
        action mirred egress redirect dev bh0
    fi
    echo "$loss" > "$STATE/loss-h$i"
  fi
  if (( delay > 0 || jitter > 0 )); then
    command -v iptables >/dev/null || die "delay needs iptables (apt-get install iptables) and python3"
    nfq_delayer_file
    swx sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
    setsid ip netns exec "$SW" python3 "$STATE/nfq_delay.py" "$i" "$delay" "$jitter" \
      "${LAB_DELAY_MAX_S:-3600}" >> "$STATE/delay-h$i.log" 2>&1 < /dev/null &
    echo $! > "$STATE/delay-h$i.pid"; disown $!
    local t; for ((t = 0; t < 50; t++)); do grep -q bound "$STATE/delay-h$i.log" 2>/dev/null && break; sleep 0.1; done
    grep -q bound "$STATE/delay-h$i.log" 2>/dev/null ||
      { netem_clear "$i"; die "delayer for h$i did not start: see $STATE/delay-h$i.log"; }
    local ipt
    for ipt in iptables ip6tables; do
      swx "$ipt" -t mangle -A FORWARD -m physdev --physdev-in "p$i" \
        -j NFQUEUE --queue-num "$i" --queue-bypass
    done
  fi
  say "h$i: delay ${delay}ms jitter ${jitter}ms loss ${loss:-0}% (on what h$i sends)"
}
netem_clear() {
  local i=$1 ipt h
  if [[ -e $STATE/loss-h$i ]]; then
    if [[ $(mode) == nft ]]; then
      for h in $(swx nft -a list chain bridge lab impair | awk -v p="\"p$i\"" '$2==p {print $NF}'); do
        swx nft delete rule bridge lab impair handle "$h"
      done
    else swx tc filter del dev "p$i" ingress pref 20 2>/dev/null || true; fi
    rm -f "$STATE/loss-h$i"
  fi
  if [[ -e $STATE/delay-h$i.pid ]]; then
    for ipt in iptables ip6tables; do
      swx "$ipt" -t mangle -D FORWARD -m physdev --physdev-in "p$i" \
        -j NFQUEUE --queue-num "$i" --queue-bypass 2>/dev/null || true
    done
    local pid; pid=$(cat "$STATE/delay-h$i.pid")
    kill -TERM "$pid" 2>/dev/null || true   # it releases what it holds, then exits
    rm -f "$STATE/delay-h$i.pid"
  fi
}
nfq_delayer_file() {  # tiny NFQUEUE client: hold each packet D(+-J) ms, then accept
  cat > "$STATE/nfq_delay.py" <<'PY'
import heapq, os, random, select, signal, socket, struct, sys, time
q, delay, jitter, max_s = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
NETLINK_NETFILTER, SUBSYS = 12, 3
PACKET, VERDICT, CONFIG = SUBSYS << 8 | 0, SUBSYS << 8 | 1, SUBSYS << 8 | 2
def attr(t, d): return struct.pack("=HH", 4 + len(d), t) + d + b"\0" * (-len(d) % 4)
def msg(t, flags, payload, fam=socket.AF_UNSPEC):
    body = struct.pack("=BBH", fam, 0, socket.htons(q)) + payload
    return struct.pack("=IHHII", 16 + len(body), t, flags, 0, 0) + body
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((0, 0))
s.send(msg(CONFIG, 1, attr(1, struct.pack("!BxH", 1, socket.AF_INET))))      # BIND
s.send(msg(CONFIG, 1, attr(2, struct.pack("!IB", 0, 1)) + attr(3, struct.pack("!I", 65536))))  # COPY_META, maxlen
print(f"nfq_delay: queue {q} bound, delay {delay}ms jitter {jitter}ms", flush=True)
held, stop = [], []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
def verdict(pid): s.send(msg(VERDICT, 1, attr(2, struct.pack("!II", 1, pid))))   # NF_ACCEPT
end = time.monotonic() + max_s
while not stop and time.monotonic() < end:      # bounded by max_s
    now = time.monotonic()
    while held and held[0][0] <= now: verdict(heapq.heappop(held)[1])
    timeout = max(0.0, min(held[0][0] - now if held else 0.2, 0.2))
    try:
        r, _, _ = select.select([s], [], [], timeout)
    except InterruptedError:
        continue
    if not r: continue
    try: data = s.recv(1 << 20)
    except OSError: continue                   # ENOBUFS under overload
    off = 0
    while off + 16 <= len(data):
        ln, typ = struct.unpack_from("=IH", data, off)
        if ln < 16: break
        if typ == PACKET:
            a = off + 20
            while a + 4 <= off + ln:
                al, at = struct.unpack_from("=HH", data, a)
                if at & 0x7fff == 1:             # NFQA_PACKET_HDR: be32 packet id
                    pid = struct.unpack_from("!I", data, a + 4)[0]
                    d = delay + (random.uniform(-jitter, jitter) if jitter else 0)
                    heapq.heappush(held, (time.monotonic() + max(d, 0) / 1000.0, pid))
                    break
                if al < 4: break
                a += (al + 3) & ~3
        off += (ln + 3) & ~3
for _, pid in held: verdict(pid)                  # release everything still held
print("nfq_delay: exit", flush=True)
PY
}

# ---------------------------------------------------------------- info
cmd_addr() { need_host "${1:-}"; echo "$NET4.$1"; }
cmd_seeds() {
  local n i out=(); n=$(nhosts)
  for ((i = 1; i <= n; i++)); do out+=("$NET4.$i${1:+:$1}"); done
  (IFS=,; echo "${out[*]}")
}
cmd_status() {
  local n i h pids; n=$(nhosts)
  echo "lab $P: $n hosts, cuts via $(mode), netem via $(cat "$STATE/netem"), state $STATE"
  for ((i = 1; i <= n; i++)); do
    h=$(hns "$i"); pids=$(ip netns pids "$h" | tr '\n' ' ')
    printf '  h%-3s %-15s link=%s pids=[%s]%s\n' "$i" "$NET4.$i" \
      "$(ip -n "$SW" -br link show "p$i" | awk '{print $2}')" "${pids% }" \
      "$([[ -e $STATE/loss-h$i ]] && echo " loss=$(cat "$STATE/loss-h$i")%")$([[ -e $STATE/delay-h$i.pid ]] && echo " delayed")"
  done
  local cuts; cuts=$(list_cuts | paste -sd' ')
  echo "  cuts (sender->receiver): ${cuts:-none}"
}

# ---------------------------------------------------------------- selftest
helper_file() {
  cat > "$STATE/probe.py" <<'PY'
# probe.py: bounded UDP/multicast/TCP probes for the selftest
import socket, struct, sys, time
op = sys.argv[1]
if op == "mrecv":          # mrecv GROUP PORT SECONDS
    g, port, secs = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", port))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(g) + socket.inet_aton("0.0.0.0"))
    s.settimeout(0.2); srcs = {}; end = time.time() + secs
    while time.time() < end:
        try: d, a = s.recvfrom(2048); srcs[a[0]] = srcs.get(a[0], 0) + 1
        except socket.timeout: pass
    print("got", sum(srcs.values()), sorted(srcs.items()))
elif op == "msend":        # msend GROUP PORT COUNT
    g, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    for i in range(n): s.sendto(b"hello %d" % i, (g, port)); time.sleep(0.02)
    print("sent", n)
elif op == "urecv":        # urecv PORT SECONDS
    port, secs = int(sys.argv[2]), float(sys.argv[3])
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)           # dual stack
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind(("::", port)); s.settimeout(0.2)
    n = 0; end = time.time() + secs
    while time.time() < end:
        try: s.recvfrom(2048); n += 1
        except socket.timeout: pass
    print("got", n)
elif op == "usend":        # usend HOST PORT COUNT [gap_s]
    h, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    gap = float(sys.argv[5]) if len(sys.argv) > 5 else 0.005
    s = socket.socket(socket.AF_INET6 if ":" in h else socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(n):
        try: s.sendto(b"x", (h, port))
        except OSError as e: print("err", e)
        time.sleep(gap)
    print("sent", n)
elif op == "tserve":       # tserve PORT SECONDS: echo server, bounded
    port, secs = int(sys.argv[2]), float(sys.argv[3])
    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)       # dual stack
    s.bind(("::", port)); s.listen(16); s.settimeout(0.2); end = time.time() + secs
    print("listening", port, flush=True)
    while time.time() < end:
        try: c, a = s.accept()
        except socket.timeout: continue
        c.settimeout(2)
        try: c.sendall(c.recv(64))
        except OSError: pass
        c.close()
elif op == "tconn":        # tconn HOST PORT TIMEOUT -> exit 0 if echo works
    h, port, to = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    t0 = time.time()
    try:
        c = socket.create_connection((h, port), timeout=to); c.sendall(b"ping")
        ok = c.recv(64) == b"ping"
        print("ok" if ok else "bad", "%.1fms" % ((time.time() - t0) * 1000)); sys.exit(0 if ok else 1)
    except OSError as e:
        print("fail", type(e).__name__, e, "%.1fms" % ((time.time() - t0) * 1000)); sys.exit(1)
PY
}
cmd_selftest() {
  local PASS=0 FAIL=0 G=239.255.42.99 GP=4242
  check() { local name=$1; shift; if "$@"; then PASS=$((PASS+1)); echo "PASS $name"; else FAIL=$((FAIL+1)); echo "FAIL $name"; fi; }
  fails() { ! "$@"; }
  is() { [[ $1 == "$2" ]]; }
  between() { (( $1 > $2 && $1 < $3 )); }
  py() { local i=$1; shift; ip netns exec "$(hns "$i")" python3 "$STATE/probe.py" "$@"; }
  # mcast SENDER "RECEIVERS" -> "host:count ..." (20 datagrams sent)
  mcast() {
    local s=$1 r pids=() res=""
    for r in $2; do py "$r" mrecv $G $GP 1.5 > "$STATE/m$r.out" & pids+=($!); done
    sleep 0.4; py "$s" msend $G $GP 20 > /dev/null; wait "${pids[@]}"
    for r in $2; do res+="$r:$(awk '{print $2}' "$STATE/m$r.out") "; done; echo "${res% }"
  }
  # ucount FROM TO COUNT -> how many unicast UDP datagrams arrived
  ucount() {
    py "$2" urecv 5353 "$(awk -v n="$3" 'BEGIN{print 1 + n * 0.01}')" > "$STATE/u.out" & local p=$!
    sleep 0.3; py "$1" usend "$NET4.$2" 5353 "$3" 0.003 > /dev/null; wait $p; awk '{print $2}' "$STATE/u.out"
  }
  # tcp FROM TO -> prints "ok 1.2ms" / "fail ..."; status 0 iff echo worked
  tcp() {  # tcp FROM TO [6]
    local dst="$NET4.$2"; [[ ${3:-} == 6 ]] && dst="$NET6::$2"
    py "$2" tserve 7000 3 > /dev/null & local p=$! rc=0; sleep 0.3
    py "$1" tconn "$dst" 7000 1 || rc=$?; wait $p; return $rc
  }
  ms_of() { local v=${1#* }; v=${v%ms}; printf '%.0f' "$v" 2>/dev/null || echo 999999; }

  [[ -e $STATE/n ]] && die "selftest needs lab '$P' down"
  local t0=$SECONDS r; cmd_up 3
  trap 'cmd_down >/dev/null 2>&1 || true' EXIT
  r=$(mcast 1 "2 3"); echo "  multicast h1 -> h2,h3: $r"
  check "multicast h1->h2,h3" is "$r" "2:20 3:20"
  r=$(mcast 3 "1 2"); check "multicast h3->h1,h2 ($r)" is "$r" "1:20 2:20"
  check "tcp h1->h2" tcp 1 2
  check "tcp over IPv6 ULA h1->h2" tcp 1 2 6
  r=$(ucount 2 3 20); check "unicast udp h2->h3 ($r/20)" is "$r" 20

  cmd_isolate 3
  r=$(mcast 1 "2 3"); echo "  multicast h1 -> h2,h3 with h3 cut off: $r"
  check "cut: h2 still gets multicast, h3 nothing" is "$r" "2:20 3:0"
  r=$(ucount 3 1 20); check "cut: udp h3->h1 lost ($r/20)" is "$r" 0
  check "cut: tcp h1->h2 works" tcp 1 2
  check "cut: tcp h1->h3 fails" fails tcp 1 3
  check "cut: IPv6 tcp h1->h3 fails" fails tcp 1 3 6
  check "cut: IPv6 tcp h1->h2 works" tcp 1 2 6
  cmd_heal
  r=$(mcast 1 "2 3"); check "heal: multicast h1->h2,h3 ($r)" is "$r" "2:20 3:20"
  check "heal: tcp h1->h3" tcp 1 3
  check "heal: IPv6 tcp h1->h3" tcp 1 3 6

  cmd_partition 1,2 3
  r=$(mcast 3 "1 2"); check "2|1 split: h3 reaches nobody ($r)" is "$r" "1:0 2:0"
  r=$(mcast 1 "2 3"); check "2|1 split: h1 reaches h2 only ($r)" is "$r" "2:20 3:0"
  check "2|1 split: tcp h2->h1" tcp 2 1
  cmd_heal

  cmd_block 3 1     # one-way: h1 can send to h3 but receives nothing from h3
  r=$(ucount 1 3 20); check "one-way: udp h1->h3 arrives ($r/20)" is "$r" 20
  r=$(ucount 3 1 20); check "one-way: udp h3->h1 dropped ($r/20)" is "$r" 0
  r=$(ucount 3 2 20); check "one-way: udp h3->h2 arrives ($r/20)" is "$r" 20
  r=$(mcast 3 "1 2"); check "one-way: multicast h3 reaches h2 only ($r)" is "$r" "1:0 2:20"
  r=$(mcast 1 "2 3"); check "one-way: multicast h1 reaches h2,h3 ($r)" is "$r" "2:20 3:20"
  check "one-way: tcp h1->h3 fails (SYN-ACK dropped)" fails tcp 1 3
  cmd_heal

  cmd_run 2 python3 "$STATE/probe.py" tserve 7001 30 > /dev/null; sleep 0.4
  check "server on h2 reachable" py 1 tconn "$NET4.2" 7001 1
  cmd_kill 2 KILL
  check "after kill -9 of h2: connection refused" fails py 1 tconn "$NET4.2" 7001 1
  cmd_restart 2 > /dev/null; sleep 0.4
  check "after restart of h2: reachable" py 1 tconn "$NET4.2" 7001 1
  cmd_kill 2 KILL

  cmd_netem 1 loss 30%
  r=$(ucount 1 2 400); echo "  30% loss on h1: $r/400 arrived at h2"
  check "loss 30%: 200..360 of 400 arrive" between "$r" 200 360
  cmd_netem 1 clear
  r=$(ucount 1 2 100); check "loss cleared ($r/100)" is "$r" 100
  if command -v iptables >/dev/null; then
    cmd_netem 2 delay 50ms
    r=$(tcp 1 2) || true; echo "  tcp connect+echo h1->h2, 50ms on h2's egress: $r"
    check "delay 50ms: connect+echo >= 95ms" between "$(ms_of "$r")" 94 400
    cmd_netem 2 clear
    r=$(tcp 1 2) || true; check "delay cleared ($r)" between "$(ms_of "$r")" -1 40
  fi
  echo "selftest took $((SECONDS - t0)) s"
  echo "selftest: $PASS passed, $FAIL failed"
  trap - EXIT; cmd_down
  (( FAIL == 0 ))
}

# ---------------------------------------------------------------- main
(( EUID == 0 )) || die "must run as root"
sub=${1:-}; shift || true
case $sub in
  up) cmd_up "$@" ;;               down) cmd_down ;;
  run) cmd_run "$@" ;;             exec) cmd_exec "$@" ;;
  kill) cmd_kill "$@" ;;           restart) cmd_restart "$@" ;;
  cut|isolate) cmd_isolate "$@" ;; partition) cmd_partition "$@" ;;
  crash) cmd_isolate "$@"; cmd_kill "$1" KILL ;;
  block) cmd_block "$@" ;;         heal) cmd_heal ;;
  netem) cmd_netem "$@" ;;         addr) cmd_addr "$@" ;;
  seeds) cmd_seeds "$@" ;;         ns) need_host "${1:-}"; hns "$1" ;;
  status) cmd_status ;;            selftest) cmd_selftest ;;
  probe) need_host "${1:-}"; i=$1; shift; ip netns exec "$(hns "$i")" python3 "$STATE/probe.py" "$@" ;;
  *) sed -n '2,39p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
