//! Inner learning: solvers of one phase, `phi^_beta ~ argmin_phi L_beta(phi, theta)` with
//! `L_beta = L_in + beta L_out` (MATH.md §2). The free phase is `beta = 0`; nudged phases start
//! from the free solution.
//!
//! Every solver is an [`InnerSolver`]: it takes a [`Phase`] (start point, meta-parameters,
//! nudging strength) and returns one [`PhaseSolution`] whose [`PhaseInfo`] says how it
//! stopped. Gradient descent with its optimisers ([`GdParams`]) is what the estimators learn
//! with; damped Newton ([`NewtonParams`]) gives the exact references their phase solutions.
//! A [`PhaseObserver`] sees the iterates, e.g. to store them for backpropagation through the
//! steps.
//!
//! ```
//! use cml::inner::{GdParams, InnerSolver, NewtonParams, Phase, Termination};
//! use cml::oracle::Oracle;
//!
//! let problem = cml::registry::draw_problem("ridge", 0)?;
//! let (theta, oracle) = (problem.theta(), Oracle::new(problem.as_ref()));
//! let start = problem.initial_phi(theta)?;
//! let free = Phase::new(&start, theta, 0.0, "free phase");
//! // Five gradient steps with no tolerance: the budget is the stopping rule.
//! let gd = GdParams { max_steps: 5, ..GdParams::default() }.solve(&oracle, &free)?;
//! assert_eq!(gd.info.termination, Termination::Budget);
//! // Damped Newton solves the same phase to machine precision.
//! let newton = NewtonParams::default().solve(&oracle, &free)?;
//! assert_eq!(newton.info.termination, Termination::Stationary);
//! assert!(newton.info.grad_norm < gd.info.grad_norm);
//! # Ok::<(), cml::CmlError>(())
//! ```

pub mod gradient_descent;
pub mod newton;

use crate::autodiff::Gradients;
use crate::engine::EngineChoice;
use crate::error::Result;
use crate::oracle::Oracle;
use candle_core::Tensor;
pub use gradient_descent::{
    DIVERGENCE_MARGIN, Divergence, DivergenceRule, GdParams, LossRises, MAX_HALVINGS, StepSizeRule,
};
pub use newton::NewtonParams;

/// One phase to solve: minimise `L_beta(., theta)` from `start`.
#[derive(Debug, Clone, Copy)]
pub struct Phase<'a> {
    pub start: &'a Tensor,
    pub theta: &'a Tensor,
    /// The nudging strength (`0` for the free phase).
    pub beta: f64,
    /// What error messages call the phase (`free phase`, `nudged phase (beta = 0.1)`, ...).
    pub name: &'a str,
}

impl<'a> Phase<'a> {
    pub fn new(start: &'a Tensor, theta: &'a Tensor, beta: f64, name: &'a str) -> Self {
        Phase {
            start,
            theta,
            beta,
            name,
        }
    }
}

/// Why a solver stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Termination {
    /// `||d_phi L_beta||` reached the tolerance within the step budget.
    Tolerance,
    /// The step budget ran out with no tolerance set: the budget was the stopping rule.
    Budget,
    /// The step budget ran out above a non-zero tolerance: the phase is inexact (warned).
    BudgetExceeded,
    /// A Newton step no longer changed `phi` beyond rounding: a solution to machine precision.
    Stationary,
}

impl Termination {
    /// Whether the phase reached a solution (its tolerance, or machine precision).
    pub fn converged(self) -> bool {
        matches!(self, Termination::Tolerance | Termination::Stationary)
    }
}

/// What happened in one phase.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PhaseInfo {
    /// The phase's nudging strength (`0` for the free phase).
    pub beta: f64,
    pub step_size: f64,
    pub step_size_rule: StepSizeRule,
    pub steps: usize,
    pub gradient_evaluations: usize,
    /// `||d_phi L_beta||` at the returned point.
    pub grad_norm: f64,
    /// The gradient-norm tolerance the solver aimed for (0: none, the budget is the rule).
    pub tolerance: f64,
    pub loss: f64,
    /// `||grad|| / mu_beta >= ||phi - phi*_beta||` (MATH.md §3) where `mu_beta > 0` is known.
    pub certified_distance: Option<f64>,
    /// Why the solver stopped.
    pub termination: Termination,
    /// The engine that computed the gradients (`fast` or `candle`).
    pub engine: EngineChoice,
    /// Where the loss went up without diverging (`None`: it never rose beyond rounding).
    pub loss_rises: Option<LossRises>,
}

impl PhaseInfo {
    /// Whether the phase reached a solution (see [`Termination::converged`]).
    pub fn converged(&self) -> bool {
        self.termination.converged()
    }
}

/// The end point of a phase and the gradients there (`gradients.theta` is `g(beta)`).
#[derive(Debug, Clone)]
pub struct PhaseSolution {
    pub phi: Tensor,
    pub gradients: Gradients,
    pub info: PhaseInfo,
}

/// Watches a solver's iterates.
pub trait PhaseObserver {
    /// Sees `phi_k` for every iterate `k = 0 .. steps - 1` a step is taken from. A phase
    /// restarted with a halved default step size (docs/STEP_SIZE.md) starts again at `k = 0`.
    fn iterate(&mut self, k: usize, phi: &Tensor);
    /// `false` spares the fast engine building a tensor for every iterate.
    fn wants_iterates(&self) -> bool {
        true
    }
}

/// Observes nothing.
pub struct Unobserved;

impl PhaseObserver for Unobserved {
    fn iterate(&mut self, _k: usize, _phi: &Tensor) {}
    fn wants_iterates(&self) -> bool {
        false
    }
}

impl<F: FnMut(usize, &Tensor)> PhaseObserver for F {
    fn iterate(&mut self, k: usize, phi: &Tensor) {
        self(k, phi)
    }
}

/// A solver of one phase. Every oracle call it makes is charged to `oracle`.
pub trait InnerSolver {
    /// Checks the settings before any work; `phase` names the phase in the error.
    fn validate(&self, _phase: &str) -> Result<()> {
        Ok(())
    }

    /// The engine the solver's phases run on; an estimator runs its second-order products on the
    /// same one (`Candle` there means Candle everywhere, the reference).
    fn engine(&self) -> EngineChoice {
        EngineChoice::Auto
    }

    /// Solves `phase`, showing every iterate to `observer`.
    fn solve_observed(
        &self,
        oracle: &Oracle,
        phase: &Phase,
        observer: &mut dyn PhaseObserver,
    ) -> Result<PhaseSolution>;

    /// Solves `phase`.
    fn solve(&self, oracle: &Oracle, phase: &Phase) -> Result<PhaseSolution> {
        self.solve_observed(oracle, phase, &mut Unobserved)
    }
}
