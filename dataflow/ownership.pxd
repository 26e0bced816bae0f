# C declarations for the compiled build of ownership.py (setup.py): the shard calls its functions in C.
# The .py stays the reference the property tests also run as plain Python; what is declared here must
# say what the .py does.

cimport cython


@cython.locals(i=Py_ssize_t)
cpdef bint claim(list spans, object workload, object start, object end, object max_ranges) except -1
@cython.locals(i=Py_ssize_t)
cpdef owner_at(list spans, object t, object guard_ms, object clock=*, object reach_ms=*, object least_ms=*)
@cython.locals(i=Py_ssize_t)
cpdef bint contradicted(list spans, object workload, object t, object guard_ms, object clock=*, object reach_ms=*) except -1
cpdef _corrected(list spans, Py_ssize_t i, object guard_ms, object clock)
cpdef assign(list events, object owner, object time_ms)
@cython.locals(i=Py_ssize_t)
cpdef assigned_at(list events, object t)
