# C declarations for the compiled build of clock.py (setup.py): its classes become extension types whose
# attributes are struct fields and whose methods call each other in C. The .py stays the reference the
# property tests also run as plain Python; what is declared here must say what the .py does.

cimport cython


cdef class PeerClocks:
    cdef public long long guard_ms, bound_ms, memory_ms
    cdef public dict samples, numbers, known
    cdef public object spread
    cdef public long long changes

    @cython.locals(samples=PeerSamples, ordered=object, n=Py_ssize_t)
    cpdef observe(self, object looker, object reporter, long long difference_ms, long long at_ms)
    cpdef offset(self, object exporter)


cdef class PeerSamples:
    cdef public object window, by_peer, medians

    cpdef add(self, long long peer, long long difference, Py_ssize_t keep, long long at_ms)
    @cython.locals(lo=Py_ssize_t, hi=Py_ssize_t, base=cython.longlong)
    cpdef _change(self, long long key, bint adding)
