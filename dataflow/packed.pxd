# C declarations for the compiled build of packed.py (setup.py): its classes become extension types whose
# attributes are struct fields and whose methods call each other in C. The .py stays the reference the
# property tests also run as plain Python; what is declared here must say what the .py does.

cimport cython

cdef class Names:
    cdef public dict numbers
    cdef public list names
    cpdef unsigned int number(self, name) except? 0xFFFFFFFF
    cpdef name(self, unsigned int number)


cdef class PackedLookup:
    cdef public object data
    cdef public Py_ssize_t at
    cdef public int size
    cdef public long long start, deadline, settle
    cdef public object exporter
    cdef public int flags
    cdef public bytes key
    cdef public str remote_ip
    cdef public int remote_port
    cdef public tuple carried
    cdef public Py_ssize_t body_at


cdef class ReportTable:
    cdef public object log, index
    cdef public Py_ssize_t mask, live, dead, least

    cpdef add(self, bytes key, object value)
    cpdef tuple values(self, bytes key)
    cpdef tuple drop(self, bytes key)
    @cython.locals(i=Py_ssize_t, n=Py_ssize_t)
    cpdef list _places(self, bytes key)
    cpdef tuple _values(self, list places, Py_ssize_t n)


cpdef bytes packed_ip(str ip)
cpdef bytes connection_key(str ip, object port, str other_ip, object other_port)
cpdef object report(object start, object workload, object exporter, object period)
cpdef tuple read_report(object value)
cpdef object reporter(object value)
