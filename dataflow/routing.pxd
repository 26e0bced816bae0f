# C declarations for the compiled build of routing.py (setup.py): its classes become extension types whose
# attributes are struct fields and whose methods call each other in C. The .py stays the reference the
# property tests also run as plain Python; what is declared here must say what the .py does.

cdef class Router:
    cdef public object home, regions
    cdef public Py_ssize_t shards
    cdef public list shard_keys
    cdef public long long max_future_ms, max_age_ms, bound_ms
    cdef public object now_ms, wall_s, tally, limits, entitlements, arrival_check
    cdef public dict progress, told
    cdef public double told_at
    cdef public object told_cell
    cdef public dict floor, canonical_forms, places

    cpdef tuple place(self, str ip)
    cpdef list _weigh(self, list records, object message, object arrival, list bad, list answered, object counts)
    cpdef object _work(self, dict works, str ip, object arrival, tuple order)
    cpdef _claim(self, dict record, dict works, object arrival, tuple order, bint heartbeat)
    cpdef _route_flow(self, dict flow, object role, dict works, object arrival, tuple order, dict forwards, list answered, dict beats)
