"""In-place changes of traced arrays (diffprog/inplace.py): done functionally where nothing
else sees the array, refused where NumPy's change would show through another name, a view
or the caller's array (a reviewer found y = x; y += 1 and x.sort() silently lost)."""
import numpy as np
import pytest

import diffprog as dp
from diffprog.errors import ArgumentError, ArgumentValueError, ShapeError

from .helpers import numeric_grad

X = np.array([3.0, 1.0, 2.0, 5.0])


def _same_as_numpy(fn, x=X):
    got, want = dp.differentiable(fn)(x.copy()), fn(x.copy())
    assert np.result_type(got) == np.result_type(want) and np.array_equal(got, want)
    loss = lambda x: np.sum(np.sin(fn(x)))  # noqa: E731
    np.testing.assert_allclose(dp.grad(loss)(x.copy()), numeric_grad(loss, (x.copy(),), 0),
                               rtol=1e-6, atol=1e-8)


def _refused(fn, match, error=ArgumentError, x=X):
    with pytest.raises(error, match=match):
        dp.differentiable(fn)(x.copy())
    with pytest.raises(error, match=match):
        dp.grad(lambda x: np.sum(fn(x)))(x.copy())


def test_operators_on_an_array_the_function_made_are_numpys():
    def f(x):
        y = x * 2.0
        y += 1.0
        y *= x
        y **= 2
        return y
    _same_as_numpy(f)


def test_item_assignment_slices_and_augmented_items():
    def f(x):
        y = x * 1.0
        y[0] = 5.0
        y[1:] *= 3.0
        y[:2] += x[2:]
        y[[0, 0]] = x[1:3]  # repeated index: the last write wins, as NumPy
        for i in range(1, 4):
            y[i] += y[i - 1]
        return y
    _same_as_numpy(f)

    def g(x):
        a = np.outer(x, x) * 1.0
        a[0] += 1.0
        a[:, 1] *= x
        a[2, 2] = -0.0  # the value's bits, signed zero too
        a[np.array([True, False, True, False])] = x
        return a
    _same_as_numpy(g)


def test_results_keep_the_arrays_dtype_as_numpys_out_does():
    def f(x):
        y = (x * 1.0).astype(np.float32)
        y += x  # float64 result stored as float32
        z = (x * 2.0).astype(np.int64)
        z[0] = 2.7  # item assignment casts unsafely: 2
        return y, z
    got, want = dp.differentiable(f)(X), f(X)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    _refused(lambda x: (x * 1.0).astype(np.int64).__iadd__(0.5), "same_kind")


def test_in_place_methods_sort_and_fill():
    def f(x):
        y = x * 1.0
        y.sort()
        z = x * 1.0
        z.fill(2.0)
        return y * z
    _same_as_numpy(f)


def test_scalars_rebind_as_numpy_scalars_do():
    def f(x):
        s = x[0]
        t = s
        s += 1.0
        return x * (t + s)
    _same_as_numpy(f)


def test_other_names_containers_and_views_see_the_change_as_in_numpy():
    def alias(x):
        y = x * 1.0
        z = y
        z += 1.0
        return y * 2.0
    _same_as_numpy(alias)

    def container(x):
        h = [x * 1.0]
        y = h[0]
        y *= 3.0
        return h[0] + 0.0

    _same_as_numpy(container)

    def helper_changes_its_argument(x):
        def normalise(v):
            v /= np.sum(v)
        y = x * 2.0
        normalise(y)
        return y
    _same_as_numpy(helper_changes_its_argument)

    def view_changed(x):
        y = x * 1.0
        v = y[1:]
        v *= 3.0
        t = y.reshape(2, 2).T
        t[0] = 9.0
        return y + v[0]
    _same_as_numpy(view_changed)

    def base_changed(x):
        y = np.outer(x, x) * 1.0
        row, col, flat = y[1], y[:, 2], y.reshape(-1)
        y += 1.0
        y[0, 0] = -1.0
        return row * col[0] + flat[:4]
    _same_as_numpy(base_changed)

    def sort_a_view(x):
        y = x * 1.0
        y[1:].sort()
        return y
    _same_as_numpy(sort_a_view)


def test_an_array_built_from_traced_values_keeps_its_copy():
    def f(x):
        y = x * 1.0
        a = np.array([y, y * 2.0])  # NumPy copies y
        y += 10.0
        return a + y
    _same_as_numpy(f)


def test_views_numpy_keeps_read_only_or_may_copy_are_refused():
    def broadcast(x):
        b = np.broadcast_to(x * 1.0, (2, 4))
        b += 1.0
        return b
    _refused(broadcast, "read-only")

    def real_part(x):
        z = (x * 1.0).astype(complex)
        r = z.real
        r += 1.0
        return np.abs(z)
    _refused(real_part, "real")


def test_the_callers_arrays_are_never_changed():
    _refused(lambda x: x.__iadd__(1.0), "was given")

    def item(x):
        x[0] = 1.0
        return x
    _refused(item, "was given")

    def augmented_item(x):
        x[1:] *= 3.0
        return x
    _refused(augmented_item, "was given")
    w = np.ones(4)

    def global_array(x):
        v = w
        v += x
        return v
    _refused(global_array, "was given")
    assert np.array_equal(w, np.ones(4))


def test_shapes_must_match_as_numpy_requires():
    def f(x):
        y = x * 1.0
        y += np.ones((2, 4))
        return y
    _refused(f, "non-broadcastable", ShapeError)


def test_a_traced_value_stored_into_a_plain_array_is_refused_with_the_fix():
    def f(a):
        out = np.zeros(3)
        for i in range(3):
            out[i] = a[i] ** 2
        return out.sum()
    with pytest.raises(ArgumentValueError, match="np.stack"):
        dp.grad(f)(np.ones(4))

    def row(a):
        out = np.zeros((2, 4))
        out[1] = a
        return out.sum()
    with pytest.raises(ArgumentValueError, match="plain NumPy array"):
        dp.grad(row)(np.ones(4))


@pytest.mark.parametrize("copy", [
    lambda y: y.copy(), np.copy, np.array, lambda y: np.array(y, copy=True),
    lambda y: y.astype(float), lambda y: +y, lambda y: y.flatten(),
    lambda y: np.concatenate([y]), lambda y: y * 1, lambda y: y - 0, lambda y: y / 1,
    lambda y: y ** 1, lambda y: np.sum(y, axis=()),
], ids=["method", "np.copy", "np.array", "copy=True", "astype", "positive", "flatten",
        "concatenate", "times_one", "minus_zero", "over_one", "power_one", "sum_no_axes"])
def test_a_copy_changed_in_place_leaves_the_original(copy):
    # (a reviewer: copies that needed no new array handed back the same object, so
    # changing the "copy" changed the original)
    def f(x):
        y = x * 2.0
        z = copy(y)
        z += 1.0
        z[0] = 100.0
        return y, z
    got, want = dp.differentiable(f)(X), f(X.copy())
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_views_of_the_whole_array_share_it():
    def f(x):
        y = x * 2.0
        r, t = y.reshape(4), np.transpose(y)
        r[0] = 7.0
        t[1] += 1.0
        v = y.ravel()
        v[2] = -1.0
        return y
    _same_as_numpy(f)


def test_reshapes_numpy_may_copy_are_refused_and_sure_views_followed():
    def may_copy(x):
        y = (x * 2.0).reshape(2, 2)
        z = y.T * 1.5  # Fortran-ordered: its reshape is a copy in NumPy
        w = z.reshape(4)
        w[0] = 99.0
        return z
    _refused(may_copy, "may be strided")

    def rows_of_a_c_array(x):
        y = (x * 2.0).reshape(2, 2)
        v = y[1:].reshape(2)
        v += 1.0
        s = np.squeeze(y[:1])
        s *= 3.0
        return y
    _same_as_numpy(rows_of_a_c_array)


def test_zero_d_views_write_through_and_scalars_rebind():
    def f(x):
        y = x * 2.0
        v = y[1, ...]  # a 0-d view
        v[...] = 0.0
        w = y[2:3].reshape(())
        w += 5.0
        s = y[3]  # a scalar: a copy
        s += 100.0
        return y + s
    _same_as_numpy(f)


def test_an_array_made_inside_a_loop_body_from_outer_values_changes_there():
    def f(x):
        def body(c, s):
            y = x * 2.0  # outer values only, made in the body
            y[0] = s
            return c + np.sum(y), s
        return dp.scan(body, 0.0, x)[0]
    assert dp.differentiable(f)(X) == sum(np.sum(np.r_[s, (X * 2.0)[1:]]) for s in X)
    np.testing.assert_allclose(dp.grad(f)(X), [1.0] + [9.0] * 3)


def test_an_array_made_before_a_body_is_not_changed_inside_it():
    def f(x):
        y = x * 2.0

        def body(c, s):
            y[0] = s
            return c + np.sum(y), s
        return dp.scan(body, 0.0, x)[0]
    _refused(f, "was given")


def test_unsupported_array_methods_are_diffprog_errors_and_attribute_errors():
    with pytest.raises(dp.errors.UnsupportedAttributeError, match="put"):
        dp.differentiable(lambda x: (x * 1.0).put([0], [1.0]))(X)
    assert not hasattr(dp.errors.UnsupportedAttributeError("x"), "nonexistent")
    assert issubclass(dp.errors.UnsupportedAttributeError, AttributeError)


def test_setting_the_shape_reshapes_the_array_itself():
    def f(x):
        y = x * 2.0
        y.shape = (2, 2)
        v = y.reshape(4)
        v.shape = (4, 1)
        v += 1.0  # a view of y: y changes too
        return y
    _same_as_numpy(f)

    def slice_view(x):
        y = x * 2.0
        s = y[1:3]
        s.shape = (2, 1)
        return s
    _refused(slice_view, "slice or transpose view")


def test_a_loop_body_changes_its_own_carry_in_place():
    steps = np.arange(1.0, 5.0)

    def f(c0):
        def body(c, x):
            c += x
            c *= 1.5
            return c, c * 2.0
        return dp.scan(body, c0, steps)

    init = np.zeros(3)
    final, ys = dp.differentiable(f)(init)
    c, want = 0.0, []
    for x in steps:
        c = (c + x) * 1.5
        want.append(c * 2.0)
    assert np.array_equal(final, np.full(3, c)) and np.array_equal(ys[:, 0], want)
    assert np.array_equal(init, np.zeros(3))  # the caller's array is not the carry
    np.testing.assert_allclose(dp.grad(lambda c: np.sum(f(c)[1]))(init),
                               np.full(3, 2.0 * sum(1.5 ** k for k in range(1, 5))))


def test_ravel_and_functions_handing_back_their_argument_share_its_memory():
    def f(x):
        y = (x * 1.0).reshape(2, 2)
        v = y.ravel()
        v[3] = 7.0
        w = np.atleast_2d(y)
        w[0, 0] = 42.0
        c = np.ascontiguousarray(y)
        c[0, 1] = -1.0
        y[1, 0] = 5.0  # and back: the views see it
        return y, v, w
    got, want = dp.differentiable(f)(X), f(X.copy())
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_an_ode_right_hand_side_filled_into_zeros_like():
    from diffprog.sciml import odeint

    def rhs(y, t, k):
        dydt = np.zeros_like(y)  # a traced array: filled in place, as scientists write it
        dydt[0] = y[1]
        dydt[1] = -k * y[0]
        return dydt

    t, y0 = np.linspace(0.0, 1.0, 5), np.array([1.0, 0.0])
    loss = lambda k: np.sum(odeint(rhs, y0, t, k)[-1])  # noqa: E731
    eps = 1e-6
    np.testing.assert_allclose(dp.grad(loss)(1.5), (loss(1.5 + eps) - loss(1.5 - eps)) / (2 * eps),
                               rtol=1e-6)

    def fill(x):
        a, b, c = np.empty_like(x), np.ones_like(x), np.full_like(x, 2.0)
        a[:] = x * 3.0
        b[1] += x[0]
        c[0] = x[2]
        return a + b * c, np.zeros_like(x, dtype=int) + 1
    _same_as_numpy(lambda x: fill(x)[0])
    assert dp.differentiable(lambda x: fill(x)[1])(X).dtype == fill(X)[1].dtype


def test_zeros_like_masks_and_plain_reads_stay_constants():
    # (a reviewer: a bool mask from zeros_like became traced, so x[mask] was refused, and
    # float(np.zeros_like(a)[0]) was taken for a function of a)
    def f(a):
        mask = np.zeros_like(a, dtype=bool)
        mask[1] = True
        return a[mask] * float(np.zeros_like(a)[0] + 2.0)
    got, want = dp.differentiable(f)(X), f(X)
    assert np.array_equal(got, want)
    assert dp.differentiable(lambda a: np.full_like(a, a[0], shape=()))(X).shape == ()
