//! The instruction sets the vector kernels are compiled for, and the
//! runtime choice among them.
//!
//! A kernel is written once as plain Rust over fixed lanes; [`dispatch!`]
//! compiles it per instruction set. Only the vector width changes, so every
//! variant returns the same bits and tests compare them against each other.

/// The instruction sets the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// The build's baseline (SSE2 on x86-64): the fallback.
    Base,
    Avx2,
    Avx512,
}

impl Isa {
    /// The widest one this CPU runs.
    pub fn best() -> Isa {
        *Isa::available().last().unwrap_or(&Isa::Base)
    }

    /// Those this CPU runs, narrowest first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Base];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                v.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
        }
        v
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Base => "baseline (SSE2)",
            Isa::Avx2 => "AVX2",
            Isa::Avx512 => "AVX-512",
        }
    }
}

/// Compiles `$impl` once per instruction set: `$on(isa, ..)` runs the
/// given one (the baseline if this CPU lacks it), `$name(..)` the best.
/// Only the vector width changes: no FMA contraction happens without
/// fast-math, so every variant computes bit-identical results.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident, $on:ident, $impl:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            $on($crate::kernels::isa::best_isa(), $($arg),*)
        }

        /// As the function above, compiled for `isa`.
        pub fn $on(isa: $crate::kernels::isa::Isa, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide($($arg: $ty),*) -> $ret {
                    $impl($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn mid($($arg: $ty),*) -> $ret {
                    $impl($($arg),*)
                }
                if isa == $crate::kernels::isa::Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the enabled features.
                    return unsafe { wide($($arg),*) };
                }
                if isa == $crate::kernels::isa::Isa::Avx2 && std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: as above.
                    return unsafe { mid($($arg),*) };
                }
            }
            let _ = isa;
            $impl($($arg),*)
        }
    };
}

/// [`Isa::best`], detected once. `CLIPCOV_ISA=baseline` (or `avx2`) caps
/// it, so that tests can run the fallback through the binary.
pub(crate) fn best_isa() -> Isa {
    static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| {
        let best = Isa::best();
        match std::env::var("CLIPCOV_ISA").as_deref() {
            Ok("baseline") => Isa::Base,
            Ok("avx2") if best != Isa::Base => Isa::Avx2,
            _ => best,
        }
    })
}

/// Lets other kernel modules compile their kernels per instruction set.
pub(crate) use dispatch;
