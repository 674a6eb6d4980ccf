/* meshlimit.core._hotpath: the in-process window check's common case in one C call.
 *
 * What it is. ``fastpath.check_window`` (interpreted, or compiled by mypyc) pays for the
 * C calls it makes into CPython: ``bytearray.find`` with a packed key, the record's
 * unpack and pack, the ``Decision`` tuple and its float. Here the same decision is taken
 * in one call that finds the client's record in the table's bucket, applies the window
 * admission, writes the count back and builds the ``Decision``. It is the same arithmetic
 * as ``fastpath.check_window`` (whose docstring has the argument), on the same bytes:
 *
 *   - the table (``table.py``): ``buckets`` is ``ClientTable._buckets``, a list of
 *     ``bytearray`` (or None) addressed by linear hashing; its masks follow from its
 *     length alone (``len == low_mask + 1 + split``, ``ClientTable._check``);
 *   - the record (``series.py``, ``WINDOW_RECORD = "<qIIII"``): key, window index (low
 *     32 bits), count, previous count, carry; little-endian, 24 bytes;
 *   - the answer (``decision.py``): ``Decision(True, limit, remaining, reset_after, 0.0,
 *     path, False, window_ns)``.
 *
 * It takes only a known client in its current window whose carry is within the burst
 * and that is admitted. Anything else returns None *before changing anything*, and the
 * caller takes the Python path: a new client (an insert), a window roll or a clock step
 * back, a shrunk burst, a refusal, and any number outside the ranges where C's 64-bit
 * arithmetic and one double division are provably exact (see ``exact_inputs``).
 * ``tests/test_hotpath.py`` drives random sequences through this and the pure path and
 * compares every decision and the table bytes.
 *
 * The build (``setup.py``) compiles it next to the mypyc modules; ``meshlimit/_native.py``
 * lets it load only with them (unedited sources, no ``MESHLIMIT_PURE``, and not
 * ``MESHLIMIT_NO_HOTPATH``). No compiler: no module, and the caller's fallback runs.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* ``series.WINDOW_RECORD``: ``<qIIII``. */
#define RECORD_SIZE 24
#define AT_INDEX 8
#define AT_COUNT 12
#define AT_PREV 16
#define AT_CARRY 20
/* ``rules.MAX_COUNT``: limits, bursts and costs are below this. */
#define MAX_COUNT 0xFFFFFFFFLL
/* Integers up to 2**53 convert to double exactly, so ``rest_ns / 1e9`` is rounded once,
 * as Python's ``int / int`` is. */
#define EXACT_DOUBLE (1LL << 53)

/* ``decision.Decision`` (a NamedTuple: a tuple subclass of 8 fields), found at import. */
static PyTypeObject *decision_type = NULL;
/* The ``retry_after`` of every admission, and the attribute names read from a rule. */
static PyObject *zero_float = NULL;
static PyObject *name_limit = NULL, *name_burst = NULL, *name_window_ns = NULL;

/* --- the record's little-endian fields (compilers make each one load or store) ------ */

static inline uint32_t load_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void store_u32(unsigned char *p, uint32_t value)
{
    p[0] = (unsigned char)value;
    p[1] = (unsigned char)(value >> 8);
    p[2] = (unsigned char)(value >> 16);
    p[3] = (unsigned char)(value >> 24);
}

static inline uint64_t load_u64(const unsigned char *p)
{
    return (uint64_t)load_u32(p) | (uint64_t)load_u32(p + 4) << 32;
}

/* --- the table ----------------------------------------------------------------------- */

/* ``ClientTable._address`` from the bucket count: the low mask is the largest power of
 * two not above the count, less one; buckets below ``split`` were split already and are
 * addressed with the high mask. Python's ``key & mask`` on a negative key is the same bits
 * as on its unsigned two's complement. */
static Py_ssize_t bucket_address(uint64_t key, uint64_t count)
{
    uint64_t low = 1;
    while (low <= count / 2)
        low <<= 1;
    uint64_t address = key & (low - 1);
    if (address < count - low)
        address = key & (2 * low - 1);
    return (Py_ssize_t)address; /* < count: below low, or below 2 * (count - low) */
}

/* The record of ``key`` in ``bucket``, or NULL. Only record starts are compared, which
 * finds the first record with the key, as ``ClientTable.find`` does (a match of
 * ``bytearray.find`` that straddles two records is skipped there too). */
static unsigned char *find_record(PyObject *bucket, uint64_t key)
{
    Py_ssize_t size = PyByteArray_GET_SIZE(bucket);
    unsigned char *data = (unsigned char *)PyByteArray_AS_STRING(bucket);
    if (size % RECORD_SIZE)
        return NULL; /* not a window table: leave it to the Python path */
    for (Py_ssize_t pos = 0; pos < size; pos += RECORD_SIZE) {
        if (load_u64(data + pos) == key)
            return data + pos;
    }
    return NULL;
}

/* --- the numbers ---------------------------------------------------------------------- */

/* ``value`` as a C integer in [low, high]; 0 (and no error set) when it is no int or out
 * of range, so the caller declines and Python decides as it always did. */
static int as_bounded(PyObject *value, long long low, long long high, long long *out)
{
    if (!PyLong_CheckExact(value))
        return 0;
    int overflow = 0;
    long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || number < low || number > high)
        return 0;
    *out = number;
    return 1;
}

/* ``ceil(prev * rest_ns / window_ns)``, exactly: 64-bit for a small ``prev`` (the product
 * and the rounding term stay below 2**10 * 2**53 + 2**53 < 2**64), 128-bit where the
 * compiler has it (the product is below 2**32 * 2**53). Returns -1 when neither applies:
 * the caller declines. */
static long long weighted_prev(uint32_t prev, long long rest_ns, long long window_ns)
{
    if (prev < (1u << 10)) {
        unsigned long long product = (unsigned long long)prev * (unsigned long long)rest_ns;
        return (long long)((product + (unsigned long long)window_ns - 1) / window_ns);
    }
#ifdef __SIZEOF_INT128__
    unsigned __int128 product = (unsigned __int128)prev * (unsigned __int128)rest_ns;
    return (long long)((product + (unsigned __int128)window_ns - 1) / (unsigned __int128)window_ns);
#else
    return -1;
#endif
}

/* --- the check ------------------------------------------------------------------------ */

PyDoc_STRVAR(check_window_doc,
"check_window(buckets, key, rule, sliding, cost, now_ns, path) -> Decision | None\n\n"
"The admitted window check of a known client in its current window: the record in\n"
"``buckets`` (``ClientTable._buckets``) is counted and the Decision returned; None,\n"
"with nothing changed, for every other case (the caller's Python path decides).");

static PyObject *check_window(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "check_window takes 7 arguments");
        return NULL;
    }
    PyObject *buckets = args[0], *rule = args[2], *path = args[6];
    long long key, cost, now_ns, limit, burst, window_ns;
    if (!PyList_CheckExact(buckets) || PyList_GET_SIZE(buckets) == 0
        || !as_bounded(args[1], INT64_MIN, INT64_MAX, &key)
        || !as_bounded(args[4], 0, MAX_COUNT, &cost)
        || !as_bounded(args[5], 0, INT64_MAX, &now_ns))
        Py_RETURN_NONE;
    int sliding = PyObject_IsTrue(args[3]);
    if (sliding < 0)
        return NULL;

    /* The bucket, before the rule's attributes: the answer for a new client is None. */
    Py_ssize_t address = bucket_address((uint64_t)key, (uint64_t)PyList_GET_SIZE(buckets));
    PyObject *bucket = PyList_GET_ITEM(buckets, address);
    if (!PyByteArray_CheckExact(bucket))
        Py_RETURN_NONE; /* None: no record in an empty bucket */
    unsigned char *record = find_record(bucket, (uint64_t)key);
    if (record == NULL)
        Py_RETURN_NONE;

    /* The rule's numbers (a slotted dataclass: three attribute reads). */
    PyObject *limit_obj = PyObject_GetAttr(rule, name_limit);
    PyObject *burst_obj = limit_obj ? PyObject_GetAttr(rule, name_burst) : NULL;
    PyObject *window_obj = burst_obj ? PyObject_GetAttr(rule, name_window_ns) : NULL;
    PyObject *result = NULL;
    if (window_obj == NULL)
        goto done; /* an error (the rule is no rule): raised */
    result = Py_None;
    if (!as_bounded(limit_obj, 1, MAX_COUNT, &limit)
        || !as_bounded(burst_obj, 0, MAX_COUNT, &burst)
        || !as_bounded(window_obj, 1, EXACT_DOUBLE, &window_ns))
        goto done;

    /* ``fastpath.check_window``, line for line; ``now_ns`` >= 0 (else declined above), so
     * C's division is Python's floor division. */
    long long now_idx = now_ns / window_ns;
    long long rest_ns = window_ns - now_ns % window_ns;
    long long free = limit + burst - cost;
    uint32_t idx = load_u32(record + AT_INDEX), cur = load_u32(record + AT_COUNT);
    uint32_t prev = load_u32(record + AT_PREV), carry = load_u32(record + AT_CARRY);
    if (idx != (uint32_t)now_idx || (long long)carry > burst)
        goto done; /* a window roll, a clock step back, or a shrunk burst */
    free -= cur;
    if (sliding && prev) {
        long long held = weighted_prev(prev, rest_ns, window_ns);
        if (held < 0)
            goto done;
        if ((long long)carry > held)
            held = carry;
        free -= held;
    }
    else {
        free -= carry;
    }
    if (free < 0)
        goto done; /* refused: the Python path works out the retry time */
    if (cost) {
        if ((long long)cur + cost > MAX_COUNT)
            goto done; /* would not fit its 32 bits: Python raises, as it always did */
        store_u32(record + AT_COUNT, (uint32_t)(cur + cost));
    }
    if (free > limit)
        free = limit; /* ``remaining`` is capped at the limit */

    /* ``Decision(True, limit, free, rest_ns / 1e9, 0.0, path, False, window_ns)``, built
     * as ``tuple.__new__(Decision, ...)`` builds a tuple subclass. */
    PyObject *remaining = PyLong_FromLongLong(free);
    PyObject *reset_after = remaining ? PyFloat_FromDouble((double)rest_ns / 1e9) : NULL;
    PyObject *decision = reset_after ? decision_type->tp_alloc(decision_type, 8) : NULL;
    if (decision == NULL) {
        Py_XDECREF(remaining);
        Py_XDECREF(reset_after);
        result = NULL;
        goto done;
    }
    PyTuple_SET_ITEM(decision, 0, Py_NewRef(Py_True));
    PyTuple_SET_ITEM(decision, 1, Py_NewRef(limit_obj));
    PyTuple_SET_ITEM(decision, 2, remaining);
    PyTuple_SET_ITEM(decision, 3, reset_after);
    PyTuple_SET_ITEM(decision, 4, Py_NewRef(zero_float));
    PyTuple_SET_ITEM(decision, 5, Py_NewRef(path));
    PyTuple_SET_ITEM(decision, 6, Py_NewRef(Py_False));
    PyTuple_SET_ITEM(decision, 7, Py_NewRef(window_obj));
    Py_XDECREF(limit_obj);
    Py_XDECREF(burst_obj);
    Py_XDECREF(window_obj);
    return decision;

done:
    Py_XDECREF(limit_obj);
    Py_XDECREF(burst_obj);
    Py_XDECREF(window_obj);
    return Py_XNewRef(result);
}

/* --- the module ----------------------------------------------------------------------- */

/* Finds ``Decision`` and checks it is the 8-field tuple subclass built above. */
static int hotpath_exec(PyObject *module)
{
    (void)module;
    PyObject *decision_module = PyImport_ImportModule("meshlimit.core.decision");
    if (decision_module == NULL)
        return -1;
    PyObject *type = PyObject_GetAttrString(decision_module, "Decision");
    Py_DECREF(decision_module);
    if (type == NULL)
        return -1;
    PyObject *fields = PyObject_GetAttrString(type, "_fields");
    Py_ssize_t count = fields ? PyObject_Size(fields) : -1;
    Py_XDECREF(fields);
    if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type)
        || count != 8) {
        Py_DECREF(type);
        PyErr_Clear();
        PyErr_SetString(PyExc_ImportError, "meshlimit.core.decision.Decision is not as built");
        return -1;
    }
    Py_XDECREF(decision_type); /* a second import (a subinterpreter): the same class */
    decision_type = (PyTypeObject *)type; /* kept for the life of the process */
    if (zero_float != NULL)
        return 0;
    zero_float = PyFloat_FromDouble(0.0);
    name_limit = PyUnicode_InternFromString("limit");
    name_burst = PyUnicode_InternFromString("burst");
    name_window_ns = PyUnicode_InternFromString("window_ns");
    if (!zero_float || !name_limit || !name_burst || !name_window_ns)
        return -1;
    return 0;
}

static PyMethodDef hotpath_methods[] = {
    {"check_window", (PyCFunction)(void (*)(void))check_window, METH_FASTCALL, check_window_doc},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot hotpath_slots[] = {
    {Py_mod_exec, hotpath_exec},
    {0, NULL},
};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "meshlimit.core._hotpath",
    .m_doc = "The in-process window check's common case in one C call (see the source).",
    .m_size = 0,
    .m_methods = hotpath_methods,
    .m_slots = hotpath_slots,
};

PyMODINIT_FUNC PyInit__hotpath(void)
{
    return PyModuleDef_Init(&hotpath_module);
}
