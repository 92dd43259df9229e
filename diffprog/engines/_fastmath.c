/* diffprog.engines._fastmath: a NumPy ufunc ``sincos(x) -> (sin(x), cos(x))``.
 *
 * Why: sin and cos of the same argument are common in gradients (d/dx cos = -sin), and
 * libm's sincos computes both for about 70% of the price of the two calls (on the W4
 * benchmark: 35 ns/element against 49 for np.sin + np.cos). The fusion pass uses it
 * only after diffprog.engines.fastmath has checked at import that its results are
 * bit-identical to np.sin and np.cos on this machine (NumPy's float64 sin/cos call the
 * same libm); otherwise it is never used. Only a float64 loop: NumPy's float32 sin/cos
 * are its own SIMD code, which libm would not reproduce.
 *
 * The loop runs without the GIL (NumPy releases it for non-object loops), so the
 * fusion pass's worker threads run it in parallel. Floating-point flags raised by libm
 * (invalid for sin(inf)) reach NumPy's errstate handling as for np.sin.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE /* sincos */
#include <Python.h>
#include <math.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/ndarraytypes.h>
#include <numpy/ufuncobject.h>

static void
sincos_float64(char **args, const npy_intp *dimensions, const npy_intp *steps, void *data)
{
    const npy_intp n = dimensions[0];
    const npy_intp in_step = steps[0], sin_step = steps[1], cos_step = steps[2];
    char *in = args[0], *sin_out = args[1], *cos_out = args[2];
    (void)data;
    for (npy_intp i = 0; i < n; i++) {
        sincos(*(const double *)in, (double *)sin_out, (double *)cos_out);
        in += in_step;
        sin_out += sin_step;
        cos_out += cos_step;
    }
}

static PyUFuncGenericFunction sincos_loops[] = {sincos_float64};
static const char sincos_types[] = {NPY_DOUBLE, NPY_DOUBLE, NPY_DOUBLE};
static void *sincos_data[] = {NULL};

static struct PyModuleDef fastmath_module = {
    PyModuleDef_HEAD_INIT, "_fastmath",
    "Compiled helpers of the numpy engine's fusion pass (see diffprog.engines.fastmath).",
    -1, NULL,
};

PyMODINIT_FUNC
PyInit__fastmath(void)
{
    PyObject *module = PyModule_Create(&fastmath_module);
    if (module == NULL) {
        return NULL;
    }
    import_array();
    import_umath();
    PyObject *ufunc = PyUFunc_FromFuncAndData(
        sincos_loops, sincos_data, (char *)sincos_types, 1, 1, 2, PyUFunc_None, "sincos",
        "sincos(x, /, out=(None, None)) -> (sin(x), cos(x)), float64, one libm sincos call "
        "per element.", 0);
    if (ufunc == NULL || PyModule_AddObject(module, "sincos", ufunc) < 0) {
        Py_XDECREF(ufunc);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
