//! `compare --eval-set` at one or several budgets: every method's subset at
//! each budget, evaluated, with the uncertainty that includes the data.
//!
//! - A method whose picks are a ranking (the greedy of ClipCov at a fixed
//!   refresh period, every top-`B` baseline) has, at a smaller budget, the
//!   rank prefix of its subset at the larger one: it runs once, at the
//!   largest budget, and each budget evaluates a prefix.
//! - ClipCov with a budget-dependent refresh period is re-run per budget;
//!   a threshold rule (clip_score --threshold, semdedup --eps,
//!   datacomp_image_based) keeps the same rows at every budget.
//! - Paired bootstrap intervals over the eval images for each method's
//!   accuracy and for its difference from a reference method.
//! - Methods with a subset seed (random) are also drawn with further
//!   seeds: the spread of their metrics over those seeds.

use std::fmt::Write as _;

use serde::Serialize;

use super::bootstrap;
use super::{EvalMetrics, Evaluator};

/// How a method's subset at a budget was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubsetOf {
    /// The first `B` picks of the run at the largest budget.
    Prefix,
    /// A run of its own at this budget.
    Rerun,
    /// A threshold rule: the same rows at every budget.
    Threshold,
}

/// A method's subset at one budget, ready to evaluate.
pub struct Subset<'a> {
    pub method: String,
    pub how: SubsetOf,
    pub positions: &'a [usize],
    /// The same method's subsets with further subset seeds (random).
    pub other_seeds: Vec<&'a [usize]>,
}

/// Spread of the metrics over subset seeds (the first is the method's own).
#[derive(Clone, Debug, Serialize)]
pub struct SeedSpread {
    pub seeds: usize,
    pub zero_shot_top1: Vec<f64>,
    pub zero_shot_top1_std: f64,
    pub zero_shot_macro: Vec<f64>,
    pub zero_shot_macro_std: f64,
    pub clean_classes_covered: Vec<usize>,
}

/// A method's accuracy minus the reference's on the same eval images,
/// with paired bootstrap intervals.
#[derive(Clone, Debug, Serialize)]
pub struct Paired {
    pub reference: String,
    pub top1_diff: f64,
    pub top1_diff_ci: [f64; 2],
    pub macro_diff: f64,
    pub macro_diff_ci: [f64; 2],
}

#[derive(Clone, Debug, Serialize)]
pub struct MethodAtBudget {
    pub method: String,
    pub subset: SubsetOf,
    #[serde(flatten)]
    pub eval: EvalMetrics,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paired: Option<Paired>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset_seeds: Option<SeedSpread>,
}

/// Every method at one budget.
#[derive(Clone, Debug, Serialize)]
pub struct Budgeted {
    /// The fraction (`None` for a `--budget COUNT` run).
    pub fraction: Option<f64>,
    pub budget_rows: usize,
    pub methods: Vec<MethodAtBudget>,
}

fn std_of(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    if x.len() < 2 {
        return 0.0;
    }
    let m = x.iter().sum::<f64>() / n;
    (x.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / (n - 1.0)).sqrt()
}

/// Evaluates `subsets` at one budget; `reference` names the method the
/// others are paired with (if it is among them). `known` holds metrics
/// already computed for some methods (by name), reused as they are.
pub fn assess(
    ev: &Evaluator,
    fraction: Option<f64>,
    budget_rows: usize,
    subsets: &[Subset],
    reference: &str,
    known: &[(String, EvalMetrics)],
) -> Budgeted {
    let mut methods: Vec<MethodAtBudget> = subsets
        .iter()
        .map(|s| {
            let eval = known
                .iter()
                .find(|(n, _)| *n == s.method)
                .map(|(_, m)| m.clone())
                .unwrap_or_else(|| ev.evaluate(s.positions));
            let subset_seeds = (!s.other_seeds.is_empty()).then(|| {
                let others: Vec<EvalMetrics> =
                    s.other_seeds.iter().map(|p| ev.evaluate(p)).collect();
                let all: Vec<&EvalMetrics> = std::iter::once(&eval).chain(&others).collect();
                let top1: Vec<f64> = all.iter().map(|m| m.zero_shot_top1).collect();
                let mac: Vec<f64> = all.iter().map(|m| m.zero_shot_macro).collect();
                SeedSpread {
                    seeds: all.len(),
                    zero_shot_top1_std: std_of(&top1),
                    zero_shot_top1: top1,
                    zero_shot_macro_std: std_of(&mac),
                    zero_shot_macro: mac,
                    clean_classes_covered: all.iter().map(|m| m.clean_classes_covered).collect(),
                }
            });
            MethodAtBudget {
                method: s.method.clone(),
                subset: s.how,
                eval,
                paired: None,
                subset_seeds,
            }
        })
        .collect();
    let base = methods
        .iter()
        .find(|m| m.method == reference)
        .map(|m| m.eval.per_image_top1.clone());
    if let Some(base) = base {
        let labels = ev.eval_labels();
        let k = ev.classes();
        let seed = ev.seed();
        for m in methods.iter_mut().filter(|m| m.method != reference) {
            let diff: Vec<f64> = m
                .eval
                .per_image_top1
                .iter()
                .zip(&base)
                .map(|(a, b)| a - b)
                .collect();
            if diff.len() != labels.len() {
                continue; // a proxy that could not train (fewer than 2 pairs)
            }
            let all: Vec<usize> = (0..diff.len()).collect();
            m.paired = Some(Paired {
                reference: reference.to_string(),
                top1_diff: bootstrap::statistic(&diff, labels, k, false, &all),
                top1_diff_ci: bootstrap::interval(
                    &diff,
                    labels,
                    k,
                    false,
                    bootstrap::RESAMPLES,
                    seed,
                ),
                macro_diff: bootstrap::statistic(&diff, labels, k, true, &all),
                macro_diff_ci: bootstrap::interval(
                    &diff,
                    labels,
                    k,
                    true,
                    bootstrap::RESAMPLES,
                    seed,
                ),
            });
        }
    }
    Budgeted {
        fraction,
        budget_rows,
        methods,
    }
}

/// One Markdown table per budget.
pub fn markdown(s: &mut String, budgets: &[Budgeted], classes: Option<usize>) {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    let ci = |c: [f64; 2]| format!("[{:.3}, {:.3}]", c[0], c[1]);
    for b in budgets {
        let at = match b.fraction {
            Some(f) => format!("fraction {f} (B = {})", b.budget_rows),
            None => format!("B = {}", b.budget_rows),
        };
        let reference = b
            .methods
            .iter()
            .find_map(|m| m.paired.as_ref().map(|p| p.reference.clone()));
        let basis = b
            .methods
            .first()
            .map_or("", |m| m.eval.coverage_counts.describe());
        let _ = writeln!(
            s,
            "\nEval at {at}: classes and entropy count {basis}; top-1 and macro with \
             95% paired bootstrap intervals over the eval images{}:\n",
            reference.map_or(String::new(), |r| format!("; Δ = minus {r}"))
        );
        let _ = writeln!(
            s,
            "| method | subset | rows | classes | entropy | cov err | cov err (clean, balanced) | top-1 | macro | Δ top-1 | Δ macro | macro covered / uncovered | head / tail | weak / strong | R@1 | held-out loss |"
        );
        let _ = writeln!(
            s,
            "|---|---|---:|---:|---:|---:|---:|---|---|---|---|---|---|---|---:|---:|"
        );
        for m in &b.methods {
            let e = &m.eval;
            let z = &e.zero_shot_split;
            let (d1, dm) = match &m.paired {
                Some(p) => (
                    format!("{:+.3} {}", p.top1_diff, ci(p.top1_diff_ci)),
                    format!("{:+.3} {}", p.macro_diff, ci(p.macro_diff_ci)),
                ),
                None => ("-".into(), "-".into()),
            };
            let seeds = m.subset_seeds.as_ref().map_or(String::new(), |sp| {
                format!(
                    " (±{:.3} over {} subset seeds)",
                    sp.zero_shot_top1_std, sp.seeds
                )
            });
            let _ = writeln!(
                s,
                "| {} | {} | {} | {}{} | {:.3} | {:.4} | {} | {:.3} {}{} | {:.3} {} | {} | {} | {} / {} | {} / {} | {} / {} | {:.3} | {:.3} |",
                m.method,
                match m.subset {
                    SubsetOf::Prefix => "prefix",
                    SubsetOf::Rerun => "own run",
                    SubsetOf::Threshold => "threshold rule",
                },
                e.rows,
                e.clean_classes_covered,
                classes.map_or(String::new(), |k| format!("/{k}")),
                e.clean_class_entropy,
                e.cov.cov_rel_error,
                e.cov_rel_error_balanced.map_or("-".into(), |x| format!("{x:.4}")),
                e.zero_shot_top1,
                ci(e.zero_shot_top1_ci),
                seeds,
                e.zero_shot_macro,
                ci(e.zero_shot_macro_ci),
                d1,
                dm,
                opt(z.covered),
                opt(z.uncovered),
                opt(z.head),
                opt(z.tail),
                opt(z.weak),
                opt(z.strong),
                e.retrieval_r1,
                e.heldout_loss,
            );
        }
    }
}
