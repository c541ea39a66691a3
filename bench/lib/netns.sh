# Network namespaces for the benches (sourced, not run): one hub namespace holding a bridge,
# hosts joined to it by veth pairs, nothing routed anywhere else, everything deleted on exit.
#
# The sourcing script sets, before calling these:
#   P       namespace prefix (the hub is $P-hub, a host NAME is $P-NAME)
#   ALL_NS  every namespace it will make (killed and deleted on exit, and before it starts)
#   MTU     the links' MTU
#   WORK    its work directory
#   GUARD   net-guard's path (ns_guard_path finds it)
# and defines log and die.

# net-guard, beside the workspace or where this machine keeps it.
ns_guard_path() {
  local root=$1
  if [ -x "$root/../shared/tools/net-guard" ]; then echo "$root/../shared/tools/net-guard"
  else echo /work/shared/tools/net-guard; fi
}

# Every process inside our namespaces was started by the sourcing script: kill them.
ns_kill_procs() {
  local ns pid
  for ns in "${ALL_NS[@]}"; do
    ip netns list 2>/dev/null | grep -qw "^$ns" || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  done
}

# On exit (and on INT/TERM): kill what runs in the namespaces, delete them and the paths given
# here, and say what net-guard counted. Also deletes leftovers of an interrupted earlier run now.
ns_cleanup_on_exit() {
  NS_CLEANUP_PATHS=("$@")
  trap ns_cleanup EXIT
  trap 'exit 130' INT TERM
  local ns
  for ns in "${ALL_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
}
ns_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  ns_kill_procs
  sleep 0.2
  local ns
  for ns in "${ALL_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
  [ ${#NS_CLEANUP_PATHS[@]} -eq 0 ] || rm -rf "${NS_CLEANUP_PATHS[@]}"
  log "namespaces deleted: $(ip netns list | grep -c "^$P-") left; $("$GUARD" check)"
  exit $rc
}

# The hub namespace and its bridge br0 (MTU $MTU). No IGMP snooping: there is no querier, and
# the bridge is to flood multicast to every port that is up.
ns_hub() {
  ip netns add "$P-hub"
  ip -n "$P-hub" link set lo up
  ip netns exec "$P-hub" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null || true
  ip -n "$P-hub" link add br0 type bridge mcast_snooping 0
  ip -n "$P-hub" link set br0 mtu "$MTU" up
}

# Host NAME with address ADDR/24 on veth0, joined to br0 through hub port PORT; multicast
# routed to veth0, IPv6 off, socket buffers up to 64 MiB.
ns_host() {
  local ns=$P-$1 addr=$2 port=$3
  ip netns add "$ns"
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null || true
  ip link add "$port" netns "$P-hub" type veth peer name veth0 netns "$ns"
  ip -n "$P-hub" link set "$port" mtu "$MTU" master br0 up
  ip -n "$ns" link set lo up
  ip -n "$ns" link set lo multicast on
  ip -n "$ns" link set veth0 mtu "$MTU" up
  ip -n "$ns" addr add "$addr/24" dev veth0
  ip -n "$ns" route add 224.0.0.0/4 dev veth0
  # net.core.rmem_max/wmem_max are per network namespace on recent kernels; set them where
  # writable (on older kernels they are global and the root value applies).
  ip netns exec "$ns" sysctl -qw net.core.rmem_max=67108864 net.core.wmem_max=67108864 2>/dev/null || true
}

# The root namespace's socket buffer limits, raised to 64 MiB where lower (older kernels keep
# them global).
ns_raise_root_buffers() {
  local k v
  for k in rmem_max wmem_max; do
    v=$(sysctl -n net.core.$k)
    [ "$v" -ge 67108864 ] || { log "raising root net.core.$k $v -> 67108864"; sysctl -qw net.core.$k=67108864; }
  done
}

# No namespace may have a default route: nothing can be sent anywhere but the bridge's subnet.
ns_check_no_default_route() {
  local ns
  for ns in "${ALL_NS[@]}"; do
    ip -n "$ns" route show default 2>/dev/null | grep -q . && die "$ns has a default route"
  done
  return 0
}
