"""Write the example notebooks (outputs-free .ipynb) from the cells below.

Run ``python notebooks/build.py`` after editing; tests/test_notebooks.py executes them.
The build is deterministic (cell ids are digests of the cells): a run without edits
rewrites nothing, and an edit shows in ``git diff`` as that cell alone.
Each notebook asserts its own results, so a notebook that runs is a notebook that works.
"""
from __future__ import annotations

import hashlib
import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).parent


class Md(str):
    """A markdown cell (every other cell is code)."""

SETUP = """\
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import diffprog as dp"""

NOTEBOOKS = {
    "01-quickstart": [
        Md("# diffprog quickstart\nWrite ordinary NumPy; diffprog traces, differentiates and compiles it."),
        SETUP,
        """\
@dp.differentiable
def f(x):
    return np.sum(np.sin(x) * x ** 2)

x = np.linspace(-2, 2, 5)
print(f(x), dp.grad(f)(x))
expected = np.sin(x) * 2 * x + np.cos(x) * x ** 2
assert np.allclose(dp.grad(f)(x), expected)""",
        Md("The traced program and the generated gradient code are readable:"),
        """\
print(f.ir(x))
print(f.source(x, kind="grad"))""",
        Md("## Control flow\nPython `if` on traced values works (guards); `dp.cond`/`dp.scan` keep one program."),
        """\
def relu_or_square(x):
    if np.sum(x) > 0:
        return np.sum(x ** 2)
    return np.sum(np.abs(x))

assert np.allclose(dp.grad(relu_or_square)(np.array([1.0, 2.0])), [2.0, 4.0])
assert np.allclose(dp.grad(relu_or_square)(np.array([-1.0, -2.0])), [-1.0, -1.0])

def cumulative(x):
    return dp.scan(lambda c, xi: (c + xi, c + xi), 0.0, x)[1]
print(cumulative(np.arange(5.0)), dp.grad(lambda x: np.sum(cumulative(x)))(np.ones(5)))""",
        Md("## Derivatives of a function on a grid"),
        """\
xs = np.linspace(-3, 3, 200)
g = dp.grad(lambda x: np.sum(np.tanh(x) ** 2))
plt.plot(xs, np.tanh(xs) ** 2, label="tanh(x)^2")
plt.plot(xs, g(xs), label="d/dx")
plt.legend(); plt.savefig("quickstart.png")
assert np.allclose(g(xs), 2 * np.tanh(xs) * (1 - np.tanh(xs) ** 2))""",
    ],
    "02-lotka-volterra-fit": [
        Md("# Fitting Lotka-Volterra parameters to noisy data\n"
        "`odeint` is differentiable: fit the four rate constants by L-BFGS on a least-squares loss."),
        SETUP + "\nfrom diffprog.sciml import odeint",
        """\
def lotka_volterra(y, t, p):
    prey, pred = y[0], y[1]
    return np.stack([p[0] * prey - p[1] * prey * pred, -p[2] * pred + p[3] * prey * pred])

true_p = np.array([1.5, 1.0, 3.0, 1.0])
y0 = np.array([1.0, 1.0])
t = np.linspace(0.0, 6.0, 31)
rng = np.random.default_rng(0)
clean = odeint(lotka_volterra, y0, t, true_p, method="dopri5")
data = clean * (1 + 0.05 * rng.standard_normal(clean.shape))""",
        """\
def loss(log_p):
    ys = odeint(lotka_volterra, y0, t, np.exp(log_p), method="rk4", steps_per_interval=8)
    return np.mean((ys - data) ** 2)

start = np.log(np.array([1.0, 0.7, 2.5, 0.7]))
res = dp.optim.minimize_lbfgs(loss, start, maxiter=200)
fitted = np.exp(res.params)
print(res.message, res.iterations, "iterations; fitted", fitted)
assert np.allclose(fitted, true_p, rtol=0.08), fitted""",
        """\
fit = odeint(lotka_volterra, y0, t, fitted, method="dopri5")
plt.plot(t, data, "o", ms=3)
plt.plot(t, fit)
plt.xlabel("t"); plt.legend(["prey (data)", "predator (data)", "prey (fit)", "predator (fit)"])
plt.savefig("lotka_volterra.png")""",
    ],
    "03-neural-ode": [
        Md("# A neural ODE\nLearn the vector field of a damped oscillator from one trajectory: "
        "dy/dt = MLP(y), integrated by `odeint`, trained with Adam."),
        SETUP + "\nfrom diffprog.sciml import odeint",
        """\
A = np.array([[-0.1, 2.0], [-2.0, -0.1]])
true_field = lambda y, t: A @ y
y0 = np.array([2.0, 0.0])
t = np.linspace(0.0, 3.0, 31)
target = odeint(true_field, y0, t)

rng = np.random.default_rng(1)
params = {"W1": rng.standard_normal((2, 16)) * 0.5, "b1": np.zeros(16),
          "W2": rng.standard_normal((16, 2)) * 0.1, "b2": np.zeros(2)}

def field(y, t, p):
    return np.tanh(y @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]

def loss(p):
    return np.mean((odeint(field, y0, t, p, steps_per_interval=2) - target) ** 2)""",
        """\
opt = dp.optim.Adam(lr=0.02)
state = opt.init(params)
value_and_grad = dp.value_and_grad(loss)
history = []
for step in range(400):
    value, grads = value_and_grad(params)
    params, state = opt.update(grads, state, params)
    history.append(float(value))
print(history[0], "->", history[-1])
assert history[-1] < 0.05 * history[0]""",
        """\
fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
a.semilogy(history); a.set_title("training loss")
pred = odeint(field, y0, t, params)
b.plot(target[:, 0], target[:, 1], label="truth"); b.plot(pred[:, 0], pred[:, 1], "--", label="neural ODE")
b.legend(); fig.savefig("neural_ode.png")""",
    ],
    "04-pinn-heat": [
        Md("# A physics-informed network for the heat equation\n"
        "u_t = u_xx on 0 < x < 1, u(0,t) = u(1,t) = 0, u(x,0) = sin(pi x); exact: "
        "exp(-pi^2 t) sin(pi x).\nThe initial and boundary conditions are built into the "
        "ansatz u = sin(pi x) + t x (1 - x) N(x, t); the loss is the PDE residual, whose "
        "derivatives are `dp.grad` calls *inside* the loss (nested differentiation)."),
        SETUP + "\nimport time",
        """\
rng = np.random.default_rng(0)
sizes = [2, 16, 16, 1]
params = [{"W": rng.standard_normal((m, n)) / np.sqrt(m), "b": np.zeros(n)}
          for m, n in zip(sizes[:-1], sizes[1:])]

def net(p, x, t):
    h = np.stack([x, t], axis=1)
    for layer in p[:-1]:
        h = np.tanh(h @ layer["W"] + layer["b"])
    return (h @ p[-1]["W"] + p[-1]["b"])[:, 0]

def u(p, x, t):
    return np.sin(np.pi * x) + t * x * (1 - x) * net(p, x, t)

def residual(p, x, t):
    # u(x_i, t_i) depends on point i only, so the gradient of the sum is the pointwise derivative
    u_t = dp.grad(lambda t: np.sum(u(p, x, t)))(t)
    u_x = lambda x: dp.grad(lambda x: np.sum(u(p, x, t)))(x)
    u_xx = dp.grad(lambda x: np.sum(u_x(x)))(x)
    return u_t - u_xx

def loss(p, x, t):
    return np.mean(residual(p, x, t) ** 2)

x_col, t_col = rng.uniform(0, 1, 200), rng.uniform(0, 0.5, 200)""",
        """\
start = time.perf_counter()
res = dp.optim.minimize_lbfgs(loss, params, x_col, t_col, maxiter=500)
print(f"L-BFGS: {res.iterations} iterations, loss {res.value:.2e}, {time.perf_counter() - start:.1f} s")
xs, ts = np.meshgrid(np.linspace(0, 1, 41), np.linspace(0, 0.5, 21))
pred = u(res.params, xs.ravel(), ts.ravel()).reshape(xs.shape)
exact = np.exp(-np.pi ** 2 * ts) * np.sin(np.pi * xs)
error = np.max(np.abs(pred - exact))
print("max error vs the analytic solution:", error)
assert error < 1e-2""",
        """\
fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
im = a.contourf(xs, ts, pred, 20); a.set_title("PINN u(x, t)"); fig.colorbar(im, ax=a)
im = b.contourf(xs, ts, np.abs(pred - exact), 20); b.set_title("|error|"); fig.colorbar(im, ax=b)
fig.savefig("pinn_heat.png")""",
    ],
    "05-testing-gradients": [
        Md("# Testing gradients\n`diffprog.testing.check_grads` compares derivatives with finite "
        "differences, in both modes, and explains failures."),
        SETUP + "\nfrom diffprog.testing import check_grads",
        """\
report = check_grads(lambda x, w: np.sum(np.tanh(x @ w)), (np.ones((2, 3)), np.full((3, 4), 0.1)), order=2)
print(report)
assert report.passed""",
        Md("A custom rule with a deliberate bug (a factor of 2): the report finds it."),
        """\
@dp.custom_vjp
def square(x):
    return x ** 2

@square.defvjp
def square_vjp(g, x):
    return g * x          # wrong: should be 2 * g * x

bad = check_grads(lambda x: np.sum(square(x)), (np.array([1.0, 2.0]),), modes=("rev",), raise_=False)
print(bad)
assert not bad.passed and "factor" in str(bad)""",
        Md("The fixed rule passes:"),
        """\
@dp.custom_vjp
def square_ok(x):
    return x ** 2

@square_ok.defvjp
def square_ok_vjp(g, x):
    return 2 * g * x

assert check_grads(lambda x: np.sum(square_ok(x)), (np.array([1.0, 2.0]),)).passed""",
    ],
    "06-distributed-ensemble": [
        Md("# An ensemble on a Dask cluster\n"
           "`diffprog.distributed.map` runs one model for many parameter sets on the workers of "
           "a Dask cluster: each task is one `dp.vmap` call over a chunk of members, compiled "
           "once per worker. Here the cluster is a LocalCluster of two processes on this "
           "machine; `Client(\"tcp://scheduler:8786\")` would use a real one."),
        SETUP + "\nfrom dask.distributed import Client, LocalCluster\n"
        "import diffprog.distributed as dpd\nfrom diffprog.sciml import odeint",
        """\
cluster = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                       dashboard_address="127.0.0.1:0")
client = Client(cluster)

def lotka_volterra(y, t, p):
    prey, pred = y[0], y[1]
    return np.stack([p[0] * prey - p[1] * prey * pred, p[2] * prey * pred - p[3] * pred])

y0, ts = np.array([1.0, 1.0]), np.linspace(0.0, 15.0, 151)

def solve(p):
    return odeint(lotka_volterra, y0, ts, p, method="rk4", steps_per_interval=4)

# 2,000 members: each rate known to +-10 % around (1.0, 0.5, 0.5, 1.0)
rng = np.random.default_rng(0)
P = np.array([1.0, 0.5, 0.5, 1.0]) * rng.uniform(0.9, 1.1, (2000, 4))
ys = dpd.map(solve, P, client=client, chunk=250)     # 8 tasks, one vmap call each
print(ys.shape)
assert ys.shape == (2000, 151, 2)
for k in (0, 777, 1999):                             # the same as solving here
    assert np.allclose(ys[k], solve(P[k]), rtol=1e-12, atol=1e-12)""",
        Md("## The spread of the ensemble over time"),
        """\
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
for ax, k, name in zip(axes, (0, 1), ("prey", "predators")):
    lo, q1, median, q3, hi = np.percentile(ys[:, :, k], [5, 25, 50, 75, 95], axis=0)
    ax.fill_between(ts, lo, hi, alpha=0.25, label="5-95 %")
    ax.fill_between(ts, q1, q3, alpha=0.45, label="25-75 %")
    ax.plot(ts, median, lw=2, label="median")
    ax.plot(ts, ys[:3, :, k].T, lw=0.7, color="k", alpha=0.5)
    ax.set(title=name, xlabel="t")
axes[0].legend(loc="upper right")
fig.tight_layout(); fig.savefig("distributed_ensemble.png")
spread = np.percentile(ys[:, -1, 0], 95) - np.percentile(ys[:, -1, 0], 5)
print(f"5-95 % spread of the prey at t = 15: {spread:.2f}")
assert spread > 0.1     # 10 % uncertainty in the rates is visible downstream""",
        Md("Each worker keeps one compiled program for `solve` (traced once per chunk shape), "
           "however many tasks it ran:"),
        """\
print(client.run(dpd.worker_programs))
client.close(); cluster.close()""",
    ],
    "07-ensembles-vmap": [
        Md("# Ensembles and sensitivities with `dp.vmap`\n"
           "One model, many parameter sets: `dp.vmap` runs them as one batched program "
           "(like JAX's `vmap`, an `EnsembleProblem` in Julia's SciML), and composes with "
           "`dp.grad` for per-member gradients."),
        SETUP,
        """\
from diffprog.sciml import odeint

def lotka_volterra(y, t, a, b):
    prey, pred = y[0], y[1]
    return np.stack([a * prey - b * prey * pred, b * prey * pred - pred])

y0, ts = np.array([1.0, 0.5]), np.linspace(0.0, 10.0, 201)
solve = lambda a: odeint(lotka_volterra, y0, ts, a, 0.4, method="rk4")
A = np.linspace(0.6, 1.4, 200)          # an ensemble of 200 prey growth rates
trajectories = dp.vmap(solve)(A)         # one batched program: shape (200, 201, 2)
assert trajectories.shape == (200, 201, 2)
assert np.allclose(trajectories[17], solve(A[17]))""",
        Md("## Sensitivity of the final prey population to the growth rate, per member"),
        """\
final_prey = lambda a: solve(a)[-1, 0]
sensitivity = dp.vmap(dp.grad(final_prey))(A)
h = 1e-6
fd = (np.array([final_prey(a + h) for a in A[::50]]) - np.array([final_prey(a - h) for a in A[::50]])) / (2 * h)
assert np.allclose(sensitivity[::50], fd, rtol=1e-4, atol=1e-6)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
for k in range(0, 200, 20):
    ax1.plot(ts, trajectories[k, :, 0], color=plt.cm.viridis(k / 200), lw=1)
ax1.set(xlabel="t", ylabel="prey", title="ensemble trajectories")
ax2.plot(A, sensitivity)
ax2.set(xlabel="growth rate a", ylabel="d prey(T) / d a", title="per-member sensitivity")
fig.tight_layout()""",
        Md("## Per-example gradients of a model\n`in_axes=None` shares the parameters."),
        """\
rng = np.random.default_rng(0)
params = {"w": rng.standard_normal((3, 8)), "v": rng.standard_normal(8)}
X, Y = rng.standard_normal((64, 3)), rng.standard_normal(64)
loss = lambda p, x, y: (np.tanh(x @ p["w"]) @ p["v"] - y) ** 2
per_example = dp.vmap(dp.grad(loss), in_axes=(None, 0, 0))(params, X, Y)
assert per_example["w"].shape == (64, 3, 8)
assert np.allclose(per_example["w"][5], dp.grad(loss)(params, X[5], Y[5])["w"])
print("norm of each example's gradient:", np.linalg.norm(per_example["w"].reshape(64, -1), axis=1)[:5])""",
    ],
    "08-spectral-pde": [
        Md("# Fitting the viscosity of Burgers' equation through a spectral solver\n"
           "Viscous Burgers, u_t + u u_x = nu u_xx, on the periodic interval [0, 2 pi), solved "
           "pseudo-spectrally with `np.fft`: a derivative is a multiplication of the `rfft` "
           "coefficients by i k, the nonlinear term u u_x = (u^2 / 2)_x is formed on the grid and "
           "dealiased by the 2/3 rule, and time stepping is integrating-factor RK4 (diffusion "
           "exact, exp(-nu k^2 t) per mode; the nonlinear term by RK4) in `dp.fori_loop` / "
           "`dp.scan`. From noisy snapshots we recover nu and the initial amplitude by gradient, "
           "the gradients flowing through every FFT and every time step.\n\n"
           "Why not `odeint`: explicit RK4 on the stiff diffusion term is stable only for "
           "h < 2.8 / (nu k_max^2), a step that shrinks whenever the optimiser tries a larger nu; "
           "the integrating factor is stable for any nu."),
        SETUP + "\nimport time\nfrom diffprog.testing import check_grads",
        """\
N = 64                                  # grid points on [0, 2 pi)
x = 2 * np.pi * np.arange(N) / N
k = np.fft.rfftfreq(N, 1 / N)           # wavenumbers 0, 1, ..., N/2 of the rfft coefficients
keep = k < N / 3                        # 2/3 rule: drop the top third of the modes of u^2
t_obs = np.linspace(0.0, 1.5, 7)        # a snapshot every 0.25
steps = 5                               # time steps between snapshots
h = (t_obs[1] - t_obs[0]) / steps

def initial(amp):
    return amp * np.sin(x) + 0.5 * np.cos(2 * x)

def nonlinear(v):
    \"\"\"-(u^2 / 2)_x in Fourier space, dealiased; v = rfft(u) is complex.\"\"\"
    u = np.fft.irfft(v, n=N)
    return -0.5j * k * keep * np.fft.rfft(u * u)

def evolve(v0, nu):
    \"\"\"u on the grid at every t_obs (shape (7, N)) from the coefficients v0 of u(x, 0).\"\"\"
    E = np.exp(-nu * k ** 2 * h / 2)    # half a step of diffusion, exact per mode
    E2 = E * E

    def step(i, v):                     # integrating-factor RK4
        a = h * nonlinear(v)
        b = h * nonlinear(E * (v + a / 2))
        c = h * nonlinear(E * v + b / 2)
        d = h * nonlinear(E2 * v + E * c)
        return E2 * v + (E2 * a + 2 * E * (b + c) + d) / 6

    def interval(v, _):
        v = dp.fori_loop(0, steps, step, v)
        return v, np.fft.irfft(v, n=N)

    _, us = dp.scan(interval, v0, length=len(t_obs) - 1)
    return np.concatenate([np.fft.irfft(v0, n=N)[None], us])

def solve(nu, amp):
    return evolve(np.fft.rfft(initial(amp)), nu)""",
        Md("## Synthetic observations\nThe true viscosity is 0.1 and the true amplitude 1; the "
           "observations are the solution on the grid at the seven times, plus 2 % noise. "
           "The solver conserves the mean of u and dissipates energy, as Burgers' equation does."),
        """\
true_nu, true_amp = 0.1, 1.0
clean = solve(true_nu, true_amp)
rng = np.random.default_rng(0)
data = clean + 0.02 * rng.standard_normal(clean.shape)
assert np.allclose(clean.mean(axis=1), 0.0, atol=1e-12)
assert np.all(np.diff(np.sum(clean ** 2, axis=1)) < 0)

def loss(p):
    return np.mean((solve(np.exp(p["log_nu"]), p["amp"]) - data) ** 2)

p0 = {"log_nu": np.log(0.3), "amp": 0.7}    # the start: nu = 0.3, amplitude 0.7
value_and_grad = dp.value_and_grad(loss)
start = time.perf_counter(); value_and_grad(p0); first = time.perf_counter() - start
start = time.perf_counter(); value, grads = value_and_grad(p0); again = time.perf_counter() - start
print(f"value_and_grad: first call {first:.2f} s (tracing and compiling), then {1e3 * again:.0f} ms a call")
print("loss", value, "gradient", grads)""",
        Md("## The gradient agrees with finite differences\nIn both modes (reverse, what "
           "`dp.grad` uses, and forward), through 30 time steps of 4 FFT pairs each:"),
        """\
report = check_grads(loss, (p0,))
print(report)
assert report.passed""",
        Md("## Fitting nu and the amplitude\nAdam on (log nu, amplitude), recording the loss; "
           "then L-BFGS (`dp.optim.minimize_lbfgs`) from the same start, for comparison."),
        """\
opt = dp.optim.Adam(lr=0.05)
p, state = p0, opt.init(p0)
history, path = [], []
for _ in range(100):
    value, grads = value_and_grad(p)
    history.append(float(value)); path.append((float(np.exp(p["log_nu"])), float(p["amp"])))
    p, state = opt.update(grads, state, p)
nu_fit, amp_fit = float(np.exp(p["log_nu"])), float(p["amp"])
print(f"Adam:   nu = {nu_fit:.4f} (true {true_nu}), amplitude = {amp_fit:.4f} (true {true_amp})")
assert abs(nu_fit - true_nu) < 0.02 * true_nu and abs(amp_fit - true_amp) < 0.01

res = dp.optim.minimize_lbfgs(loss, p0)
nu_lbfgs = float(np.exp(res.params["log_nu"]))
print(f"L-BFGS: nu = {nu_lbfgs:.4f}, amplitude = {float(res.params['amp']):.4f} "
      f"({res.evaluations} evaluations)")
assert abs(nu_lbfgs - true_nu) < 0.01 * true_nu""",
        """\
fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 3.8))
fit = solve(nu_fit, amp_fit)
for i in (0, 2, 4, 6):
    line, = a.plot(x, fit[i], label=f"t = {t_obs[i]:.2f}")
    a.plot(x, data[i], ".", ms=3, color=line.get_color())
a.set(xlabel="x", title="observations (dots) and the fitted solution"); a.legend(fontsize=8)
b.semilogy(history); b.axhline(0.02 ** 2, ls=":", color="k", label="noise variance")
b.set(xlabel="Adam step", title="loss"); b.legend()
nus, amps = np.array(path).T
c.plot(nus, label="nu"); c.plot(amps, label="amplitude")
c.axhline(true_nu, ls=":", color="C0"); c.axhline(true_amp, ls=":", color="C1")
c.set(xlabel="Adam step", title="parameters (dotted: truth)"); c.legend()
fig.tight_layout(); fig.savefig("spectral_burgers.png")""",
        Md("## Complex values\nThe spectral coefficients are complex, and diffprog "
           "differentiates through them; a loss is real. Gradients with respect to complex "
           "arguments follow JAX's convention: for a real L of z = x + iy, `dp.grad` returns "
           "dL/dx - i dL/dy, whose conjugate points uphill (a descent step is "
           "z - lr * conj(g)). Here: the sensitivity of the loss to each Fourier coefficient "
           "of the initial condition. `irfft` ignores the imaginary parts of the k = 0 and "
           "k = N/2 coefficients, so their gradients are real."),
        """\
v0 = np.fft.rfft(initial(true_amp))
loss_v0 = lambda v: np.mean((evolve(v, true_nu) - data) ** 2)
g = dp.grad(loss_v0)(v0)
eps = 1e-6
for j in (0, 1, 2, N // 2):
    e = np.zeros(len(k)); e[j] = eps
    dx = (loss_v0(v0 + e) - loss_v0(v0 - e)) / (2 * eps)
    dy = (loss_v0(v0 + 1j * e) - loss_v0(v0 - 1j * e)) / (2 * eps)
    print(f"k = {j:2d}: dp.grad {g[j]:.6e}   finite differences dL/dx - i dL/dy {dx - 1j * dy:.6e}")
    assert np.isclose(g[j], dx - 1j * dy, rtol=1e-5, atol=1e-12)
assert np.allclose(g[[0, N // 2]].imag, 0.0, atol=1e-15)
assert check_grads(loss_v0, (v0,), modes=("rev",)).passed""",
    ],
}


def cell_ids(cells) -> list[str]:
    """Stable cell ids: a digest of each cell's kind and text (a repeated cell gets -2,
    -3, ...), so a rebuild without edits reproduces every file byte for byte and editing
    one cell changes only that cell's id."""
    ids, seen = [], {}
    for text in cells:
        kind = "markdown" if isinstance(text, Md) else "code"
        digest = hashlib.sha256(f"{kind}\n{text}".encode()).hexdigest()[:12]
        seen[digest] = seen.get(digest, 0) + 1
        ids.append(digest if seen[digest] == 1 else f"{digest}-{seen[digest]}")
    return ids


def notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for text, cell_id in zip(cells, cell_ids(cells)):
        cell = new_markdown_cell(str(text)) if isinstance(text, Md) else new_code_cell(text)
        cell.id = cell_id
        nb.cells.append(cell)
    return nb


def build(out: pathlib.Path = HERE) -> list[tuple[pathlib.Path, bool]]:
    """Write every notebook into ``out``; returns (path, changed) pairs. A file whose
    content would not change is left alone (not even its modification time)."""
    results = []
    for name, cells in NOTEBOOKS.items():
        path = pathlib.Path(out) / f"{name}.ipynb"
        text = nbformat.writes(notebook(cells)) + "\n"
        changed = not path.exists() or path.read_text(encoding="utf-8") != text
        if changed:
            path.write_text(text, encoding="utf-8")
        results.append((path, changed))
    return results


if __name__ == "__main__":
    for p, changed in build():
        print("wrote    " if changed else "unchanged", p)
