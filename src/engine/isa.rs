//! The instruction set the CPU kernels use, as a token only run-time detection can make.
//!
//! The SIMD kernels are `unsafe` to call: on a CPU without the instructions they are undefined
//! behaviour. Every safe function that dispatches to them takes (or looks up) an [`Isa`], and an
//! `Isa` that says AVX2, AVX-VNNI or AVX-512 VNNI can only come from [`Isa::detect`],
//! [`Isa::avx2`], [`Isa::avx_vnni`] or [`Isa::avx512_vnni`], all of which ask the CPU first. Its field is private, so no code outside this
//! module can build one that lies.

/// The kernels a product or an attention pass may use on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isa(Kind);

/// Which kernels an [`Isa`] stands for (readable by the dispatchers, never turned back into one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The AVX2 set below plus AVX-512 F, BW and VNNI (512-bit `vpdpbusd`: Ice Lake, Sapphire
    /// Rapids, Zen 4 and later), detected at run time.
    Avx512Vnni,
    /// The AVX2 set below plus AVX-VNNI (`vpdpbusd` on 256-bit vectors: Alder Lake, Sapphire Rapids
    /// and later, Zen 5), detected at run time.
    AvxVnni,
    /// 256-bit integer SIMD with fused multiply-add and f16 conversion (x86-64-v3 and up),
    /// detected at run time.
    Avx2,
    /// Plain Rust, any CPU.
    Portable,
}

impl Isa {
    /// The best the running CPU offers. `LABELMILL_QGEMM_ISA` (`portable`, `avx2`, `avx-vnni`)
    /// caps it, for comparisons: never above what the CPU has. Decided once per process
    /// (attention asks on every call).
    pub fn detect() -> Self {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let cap = std::env::var("LABELMILL_QGEMM_ISA").unwrap_or_default();
            let best = match cap.as_str() {
                "portable" => None,
                "avx2" => Self::avx2(),
                "avx-vnni" => Self::avx_vnni().or_else(Self::avx2),
                _ => Self::avx512_vnni()
                    .or_else(Self::avx_vnni)
                    .or_else(Self::avx2),
            };
            best.unwrap_or_else(Self::portable)
        })
    }

    /// The AVX-512 VNNI kernels, when this CPU has AVX-512 F, BW and VNNI besides AVX2, FMA and
    /// F16C.
    pub fn avx512_vnni() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if Self::avx2().is_some()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
        {
            return Some(Self(Kind::Avx512Vnni));
        }
        None
    }

    /// The AVX-VNNI kernels, when this CPU has AVX-VNNI besides AVX2, FMA and F16C.
    pub fn avx_vnni() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if Self::avx2().is_some() && is_x86_feature_detected!("avxvnni") {
            return Some(Self(Kind::AvxVnni));
        }
        None
    }

    /// The AVX2 kernels, when this CPU has AVX2, FMA and F16C (whatever the environment says;
    /// every x86-64-v3 CPU has all three).
    pub fn avx2() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Some(Self(Kind::Avx2));
        }
        None
    }

    /// The plain kernels: valid on every CPU.
    pub fn portable() -> Self {
        Self(Kind::Portable)
    }

    /// Which kernels this token selects.
    pub(crate) fn kind(self) -> Kind {
        self.0
    }

    /// Whether this token allows the AVX2 kernels (proof that the CPU has AVX2, FMA and F16C):
    /// true for the VNNI tokens too, whose CPU has all three.
    pub fn is_avx2(self) -> bool {
        matches!(self.0, Kind::Avx2 | Kind::AvxVnni | Kind::Avx512Vnni)
    }

    /// Whether this token allows 512-bit f32 kernels (proof that the CPU has AVX-512 F besides
    /// the AVX2 set): only the AVX-512 VNNI token.
    pub fn is_avx512(self) -> bool {
        matches!(self.0, Kind::Avx512Vnni)
    }

    /// The name used in logs and benchmark reports.
    pub fn name(self) -> &'static str {
        match self.0 {
            Kind::Avx512Vnni => "avx512-vnni",
            Kind::AvxVnni => "avx-vnni",
            Kind::Avx2 => "avx2",
            Kind::Portable => "portable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx2_only_where_the_cpu_has_it() {
        #[cfg(target_arch = "x86_64")]
        let has = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        #[cfg(not(target_arch = "x86_64"))]
        let has = false;
        assert_eq!(Isa::avx2().is_some(), has);
        assert!(!Isa::portable().is_avx2());
        assert!(!Isa::portable().is_avx512());
        assert_eq!(Isa::portable().name(), "portable");
        if let Some(isa) = Isa::avx2() {
            assert!(isa.is_avx2());
            assert!(!isa.is_avx512(), "the AVX2 token allows no 512-bit kernels");
            assert_eq!(isa.name(), "avx2");
        } else {
            eprintln!("skipped: this CPU has no AVX2 + FMA + F16C, so no AVX2 token can exist");
        }
        // Without the override, detection picks the best the CPU has.
        if std::env::var("LABELMILL_QGEMM_ISA").is_err() {
            assert_eq!(Isa::detect().is_avx2(), has);
        }
    }

    #[test]
    fn avx_vnni_only_where_the_cpu_has_it() {
        #[cfg(target_arch = "x86_64")]
        let has = Isa::avx2().is_some() && is_x86_feature_detected!("avxvnni");
        #[cfg(not(target_arch = "x86_64"))]
        let has = false;
        assert_eq!(Isa::avx_vnni().is_some(), has);
        match Isa::avx_vnni() {
            Some(isa) => {
                assert_eq!(isa.name(), "avx-vnni");
                assert!(isa.is_avx2(), "an AVX-VNNI CPU has the AVX2 kernels too");
                assert_ne!(Some(isa), Isa::avx2());
                if std::env::var("LABELMILL_QGEMM_ISA").is_err() && Isa::avx512_vnni().is_none() {
                    assert_eq!(Isa::detect(), isa, "detection prefers AVX-VNNI to AVX2");
                }
            }
            None => eprintln!("skipped: this CPU has no AVX-VNNI, so no AVX-VNNI token can exist"),
        }
    }

    #[test]
    fn avx512_vnni_only_where_the_cpu_has_it() {
        #[cfg(target_arch = "x86_64")]
        let has = Isa::avx2().is_some()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni");
        #[cfg(not(target_arch = "x86_64"))]
        let has = false;
        assert_eq!(Isa::avx512_vnni().is_some(), has);
        match Isa::avx512_vnni() {
            Some(isa) => {
                assert_eq!(isa.name(), "avx512-vnni");
                assert!(
                    isa.is_avx2(),
                    "an AVX-512 VNNI CPU has the AVX2 kernels too"
                );
                assert!(isa.is_avx512());
                if std::env::var("LABELMILL_QGEMM_ISA").is_err() {
                    assert_eq!(Isa::detect(), isa, "detection prefers AVX-512 VNNI");
                }
            }
            None => eprintln!("skipped: this CPU has no AVX-512 VNNI, so no such token can exist"),
        }
    }
}
