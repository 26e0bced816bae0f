# C declarations for the compiled build of attribution.py (setup.py): its classes become extension types whose
# attributes are struct fields and whose methods call each other in C. The .py stays the reference the
# property tests also run as plain Python; what is declared here must say what the .py does.

cimport cython

from dataflow cimport ownership
from dataflow.clock cimport PeerClocks
from dataflow.packed cimport Names, PackedLookup, ReportTable, connection_key, read_report, report, reporter


cdef class Shard:
    cdef public long long delay_ms, event_settle_ms, max_wait_ms, retention_ms
    cdef public long long max_ranges, max_pending, max_connections
    cdef public dict evicted
    cdef public long long guard_ms, window_ms
    cdef public object clock
    cdef public long long now_ms
    cdef public list inbox
    cdef public long long received, late
    cdef public PeerClocks peers
    cdef public long long refused_claims
    cdef public dict claimers, ranges, port_ranges, events
    cdef public Names names
    cdef public long long packing
    cdef public ReportTable reports
    cdef public long long report_count
    cdef public dict reports_of, first_tries
    cdef public list first_try_points
    cdef public dict waiting
    cdef public list deadlines
    cdef public set deadline_marks
    cdef public set at_edges
    cdef public long long clocks_seen
    cdef public long long pending_count
    cdef public dict unnamed
    cdef public long long prune_every_ms, range_prune_every
    cdef public object next_prune_ms

    cpdef list absorb(self, object item)
    cpdef _advance_to(self, object now, list decided)
    cpdef _packed(self, object work)
    @cython.locals(p=PackedLookup)
    cpdef _apply(self, object work, list decided)
    cpdef _hold_first_try(self, object due, object packed)
    cpdef _hold_until_deadline(self, PackedLookup p)
    cpdef _let_go(self, PackedLookup p)
    cpdef _forget_unnamed(self, PackedLookup p)
    cpdef _keep_report(self, bytes key, object item, object arrival)
    cpdef tuple _drop_reports(self, bytes key)
    cpdef bint _named(self, object ip, bytes key, object carried) except -1
    cpdef _forget_reports(self, object exporter, object n)
    @cython.locals(p=PackedLookup)
    cpdef _decide_due(self, list decided)
    cpdef dict _final(self, PackedLookup p)
    cpdef dict _record(self, PackedLookup p, tuple verdict)
    cpdef tuple _reports(self, PackedLookup p)
    cpdef _sample_clocks(self, PackedLookup p, tuple reports)
    cpdef _retry_edges(self, list decided)
    @cython.locals(p=PackedLookup)
    cpdef _retry(self, object ip, list decided)
    cpdef tuple _verdict(self, PackedLookup p, tuple reports, bint final=*)
