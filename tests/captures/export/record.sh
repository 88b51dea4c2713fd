#!/bin/sh
# Records the small real-traffic captures the export tests compare against tshark (run as root).
#   veth-ns.pcap   : Ethernet over a veth pair between two network namespaces, nanosecond timestamps;
#                    IPv4 + IPv6 TCP (HTTP), UDP and ICMP/ICMPv6 between 10.77.0.1/fd77::1 and .2/::2
#   lo-mixed.pcapng: loopback captured by dumpcap (pcapng, nanoseconds): HTTP on 127.0.0.1 and ::1, UDP
#   any-sll2.pcap  : the "any" pseudo-interface (Linux cooked v2, link type 276): HTTP on 127.0.0.1
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
A=nrexp-a; B=nrexp-b
cleanup() { ip netns del $A 2>/dev/null || true; ip netns del $B 2>/dev/null || true; }
trap cleanup EXIT
cleanup
ip netns add $A; ip netns add $B
ip link add nrexp0 type veth peer name nrexp1
ip link set nrexp0 netns $A; ip link set nrexp1 netns $B
ip -n $A addr add 10.77.0.1/24 dev nrexp0; ip -n $B addr add 10.77.0.2/24 dev nrexp1
ip -n $A addr add fd77::1/64 dev nrexp0 nodad; ip -n $B addr add fd77::2/64 dev nrexp1 nodad
for ns in $A $B; do ip -n $ns link set lo up; done
ip -n $A link set nrexp0 up; ip -n $B link set nrexp1 up
ip netns exec $B python3 -m http.server 8080 --bind :: >/dev/null 2>&1 &
SERVER=$!
sleep 1
ip netns exec $A tcpdump -i nrexp0 -U -s 0 --time-stamp-precision=nano -w "$HERE/veth-ns.pcap" 2>/dev/null &
DUMP=$!
sleep 1
for i in 1 2 3; do
  ip netns exec $A curl -s -o /dev/null "http://10.77.0.2:8080/" || true
  ip netns exec $A curl -s -o /dev/null "http://[fd77::2]:8080/?v6=$i" || true
  ip netns exec $A python3 "$HERE/traffic.py" udp 10.77.0.2 9999 hello-udp-$i
  ip netns exec $A python3 "$HERE/traffic.py" udp fd77::2 9998 hello-udp6-$i
done
ip netns exec $A python3 "$HERE/traffic.py" ping 10.77.0.2 3
ip netns exec $A python3 "$HERE/traffic.py" ping fd77::2 3
sleep 1
kill $DUMP; wait $DUMP 2>/dev/null || true
kill $SERVER; wait $SERVER 2>/dev/null || true

python3 -m http.server 18080 --bind :: >/dev/null 2>&1 &
SERVER=$!
sleep 1
dumpcap -q -i lo -f "port 18080 or port 19999" -w "$HERE/lo-mixed.pcapng" 2>/dev/null &
DUMP=$!
sleep 2
curl -s -o /dev/null http://127.0.0.1:18080/ || true
curl -s -o /dev/null "http://[::1]:18080/?x=1" || true
python3 "$HERE/traffic.py" udp 127.0.0.1 19999 lo-udp
curl -s -o /dev/null http://127.0.0.1:18080/again || true
sleep 1
kill $DUMP; wait $DUMP 2>/dev/null || true

tcpdump -i any -U -s 0 -w "$HERE/any-sll2.pcap" port 18080 2>/dev/null &
DUMP=$!
sleep 1
curl -s -o /dev/null http://127.0.0.1:18080/any || true
sleep 1
kill $DUMP; wait $DUMP 2>/dev/null || true
kill $SERVER; wait $SERVER 2>/dev/null || true
chmod 644 "$HERE"/*.pcap*
ls -l "$HERE"/*.pcap*
