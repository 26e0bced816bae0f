// flowtrace: one event per TCP connection (start, end, both ends, direction, bytes, process, local
// workload), from tracepoint arguments only: the kernel headers on our hosts do not match the running
// kernel, so struct layouts would be wrong while tracepoint layouts come from tracefs.
//
// Built by exporter/capture.py with -DMAX_CONNECTIONS, -DMAX_WORKLOADS, -DRINGBUF_PAGES and
// optionally -DCAPTURE_LOOPBACK, and -DSOCK_NET_OFFSET/-DNET_INUM_OFFSET when the running kernel's
// BTF gives them (exporter/kernel_layout.py).

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define PROTO_TCP 6 // IPPROTO_TCP is not defined in BCC's prelude here
#define MSG_PEEK 2
#define WORKLOAD_LEN 64
#define OUTBOUND 1
#define INBOUND 2

// Counters the agent reports every interval: nothing is lost silently.
#define LOST_EVENTS 0
#define CONNECTIONS_FULL 1
#define COUNTERS 2

// Addresses are 16 bytes; the tracepoints give IPv4 as v4-mapped IPv6 in saddr_v6 already.
struct ip_key {
    u8 addr[16];
};

// LPM trie key over (IPv4, port), both in network byte order, so that a port range decomposes into
// a few aligned prefixes: 10.0.3.8 ports 20000-20999 is six entries. pad is never part of a prefix.
struct ports_key {
    u32 prefixlen;
    u8 addr[4];
    u8 port[2];
    u8 pad[2];
};

struct workload {
    char name[WORKLOAD_LEN];
};

// Every prefix of a range carries the whole range, so a flow can say which ports its claim covers.
struct ports_workload {
    struct workload workload;
    u16 lo;
    u16 hi;
};

struct conn {
    u64 start_ns; // 0 until established
    u64 end_ns;   // 0 until the state reaches CLOSE
    u64 bytes_sent;
    u64 bytes_received;
    u32 pid;
    u16 lport;
    u16 rport;
    u8 laddr[16];
    u8 raddr[16];
    u32 netns;    // the socket's network namespace (inode number), 0 when not known
    u16 ports_lo; // the claimed port range when an (IPv4, ports) entry named the workload, else 0
    u16 ports_hi;
    u8 direction;
    u8 pad[7];
    char comm[16];
    struct workload workload;
};

struct flow_event {
    u64 start_ns;
    u64 end_ns;
    u64 bytes_sent;
    u64 bytes_received;
    u64 cookie;
    u32 pid;
    u16 lport;
    u16 rport;
    u8 laddr[16];
    u8 raddr[16];
    u32 netns;    // the socket's network namespace (inode number), 0 when not known
    u16 ports_lo; // the claimed port range when an (IPv4, ports) entry named the workload, else 0
    u16 ports_hi;
    u8 direction;
    u8 pad[7];
    char comm[16];
    struct workload workload;
};

// Filled by `flowattr ipman` (or a container platform, or flowattr-cni): local IP -> workload, and
// (local IPv4, local port range) -> workload for workloads sharing one address. Pinned so they outlive the agent; the agent
// opens the pins and puts them in slot 0 of these one-slot arrays of maps. (BCC's BPF_TABLE_PINNED
// would reopen a pin by map id, BPF_MAP_GET_FD_BY_ID, which needs CAP_SYS_ADMIN.) The *_shape maps
// are only the templates the arrays of maps require; they stay empty.
BPF_HASH(ip_workload_shape, struct ip_key, struct workload, MAX_WORKLOADS);
BPF_LPM_TRIE(ip_ports_workload_shape, struct ports_key, struct ports_workload, MAX_WORKLOADS);
BPF_ARRAY_OF_MAPS(ip_workload, "ip_workload_shape", 1);
BPF_ARRAY_OF_MAPS(ip_ports_workload, "ip_ports_workload_shape", 1);

// Keyed by the socket address: an opaque id, never dereferenced.
BPF_HASH(connections, u64, struct conn, MAX_CONNECTIONS);
BPF_PERCPU_ARRAY(counters, u64, COUNTERS);
BPF_RINGBUF_OUTPUT(flows, RINGBUF_PAGES);

static __always_inline void count(int index)
{
    u64 *value = counters.lookup(&index);
    if (value)
        (*value)++;
}

static __always_inline int is_loopback(const u8 *addr)
{
    // ::ffff:127.0.0.0/104 or ::1
    u64 high = *(const u64 *)addr;
    u32 third = *(const u32 *)(addr + 8);
    u32 last = *(const u32 *)(addr + 12);
    if (high != 0)
        return 0;
    if (third == 0xffff0000 && (last & 0xff) == 127)
        return 1;
    return third == 0 && last == 0x01000000;
}

static __always_inline void find_workload(struct conn *c)
{
    int slot = 0;
    struct workload *w = NULL;
    void *by_ports = ip_ports_workload.lookup(&slot);
    // Only IPv4 addresses are shared by port: ::ffff:a.b.c.d
    u32 third = *(const u32 *)(c->laddr + 8);
    if (by_ports && *(const u64 *)c->laddr == 0 && third == 0xffff0000) {
        struct ports_key pk = {.prefixlen = 48};
        __builtin_memcpy(pk.addr, c->laddr + 12, 4);
        pk.port[0] = c->lport >> 8;
        pk.port[1] = c->lport & 0xff;
        struct ports_workload *pw = bpf_map_lookup_elem(by_ports, &pk);
        if (pw) {
            w = &pw->workload;
            c->ports_lo = pw->lo;
            c->ports_hi = pw->hi;
        }
    }
    void *by_ip = ip_workload.lookup(&slot);
    if (!w && by_ip) {
        struct ip_key k = {};
        __builtin_memcpy(k.addr, c->laddr, 16);
        w = bpf_map_lookup_elem(by_ip, &k);
    }
    if (w)
        __builtin_memcpy(&c->workload, w, sizeof(*w));
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != PROTO_TCP)
        return 0;
    u64 sk = (u64)args->skaddr;

    if (args->newstate == TCP_SYN_SENT) {
        // connect() runs in the caller's context; the ESTABLISHED transition may not.
        struct conn c = {};
        c.pid = bpf_get_current_pid_tgid() >> 32;
        bpf_get_current_comm(&c.comm, sizeof(c.comm));
        if (connections.update(&sk, &c) != 0)
            count(CONNECTIONS_FULL);
        return 0;
    }

    if (args->newstate == TCP_ESTABLISHED &&
        (args->oldstate == TCP_SYN_SENT || args->oldstate == TCP_SYN_RECV)) {
        // Copied with a helper: the verifier refuses memcpy from an offset ctx pointer.
        u8 laddr[16], raddr[16];
        bpf_probe_read_kernel(laddr, sizeof(laddr), args->saddr_v6);
        bpf_probe_read_kernel(raddr, sizeof(raddr), args->daddr_v6);
#ifndef CAPTURE_LOOPBACK
        if (is_loopback(laddr))
            return 0;
#endif
        struct conn fresh = {};
        struct conn *c = connections.lookup(&sk);
        if (!c) {
            if (connections.update(&sk, &fresh) != 0) {
                count(CONNECTIONS_FULL);
                return 0;
            }
            c = connections.lookup(&sk);
            if (!c)
                return 0;
        }
        c->start_ns = bpf_ktime_get_ns();
        c->direction = args->oldstate == TCP_SYN_SENT ? OUTBOUND : INBOUND;
        c->lport = args->sport;
        c->rport = args->dport;
        __builtin_memcpy(c->laddr, laddr, 16);
        __builtin_memcpy(c->raddr, raddr, 16);
#ifdef SOCK_NET_OFFSET
        // The one exception to "tracepoint arguments only": the socket's network namespace, which
        // no tracepoint gives, at offsets from the running kernel's own BTF, not from headers. The
        // host identity names only sockets of the host's namespace; a wrong read names nobody.
        u64 net = 0;
        if (bpf_probe_read_kernel(&net, sizeof(net), (void *)(sk + SOCK_NET_OFFSET)) == 0 && net)
            bpf_probe_read_kernel(&c->netns, sizeof(c->netns), (void *)(net + NET_INUM_OFFSET));
#endif
        find_workload(c);
        return 0;
    }

    if (args->newstate == TCP_CLOSE) {
        struct conn *c = connections.lookup(&sk);
        if (!c)
            return 0;
        if (c->start_ns == 0) {
            connections.delete(&sk); // never established: not a connection
            return 0;
        }
        // The end is now; the event waits for tcp_destroy_sock so that data the process still
        // reads after the close (a half-closed socket) is counted.
        c->end_ns = bpf_ktime_get_ns();
    }
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_destroy_sock)
{
    u64 sk = (u64)args->skaddr;
    struct conn *c = connections.lookup(&sk);
    if (!c)
        return 0;
    if (c->start_ns != 0) {
        struct flow_event *e = flows.ringbuf_reserve(sizeof(*e));
        if (!e) {
            count(LOST_EVENTS);
        } else {
            e->start_ns = c->start_ns;
            e->end_ns = c->end_ns ? c->end_ns : bpf_ktime_get_ns();
            e->bytes_sent = c->bytes_sent;
            e->bytes_received = c->bytes_received;
            e->cookie = args->sock_cookie;
            e->pid = c->pid;
            e->lport = c->lport;
            e->rport = c->rport;
            __builtin_memcpy(e->laddr, c->laddr, 16);
            __builtin_memcpy(e->raddr, c->raddr, 16);
            e->direction = c->direction;
            e->netns = c->netns;
            e->ports_lo = c->ports_lo;
            e->ports_hi = c->ports_hi;
            __builtin_memcpy(e->comm, c->comm, sizeof(e->comm));
            __builtin_memcpy(&e->workload, &c->workload, sizeof(e->workload));
            flows.ringbuf_submit(e, 0);
        }
    }
    connections.delete(&sk);
    return 0;
}

static __always_inline void add_bytes(u64 sk, int ret, int flags, int sent)
{
    if (ret <= 0 || (flags & MSG_PEEK))
        return;
    struct conn *c = connections.lookup(&sk);
    if (!c)
        return;
    if (c->pid == 0) {
        // Accepted sockets become established in softirq context; the first process to read or
        // write the socket is the one that owns it.
        c->pid = bpf_get_current_pid_tgid() >> 32;
        bpf_get_current_comm(&c->comm, sizeof(c->comm));
    }
    if (sent)
        __sync_fetch_and_add(&c->bytes_sent, ret);
    else
        __sync_fetch_and_add(&c->bytes_received, ret);
}

TRACEPOINT_PROBE(sock, sock_send_length)
{
    if (args->protocol != PROTO_TCP)
        return 0;
    add_bytes((u64)args->sk, args->ret, args->flags, 1);
    return 0;
}

TRACEPOINT_PROBE(sock, sock_recv_length)
{
    if (args->protocol != PROTO_TCP)
        return 0;
    add_bytes((u64)args->sk, args->ret, args->flags, 0);
    return 0;
}
