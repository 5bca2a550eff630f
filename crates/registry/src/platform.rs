//! Platforms (`linux/arm64/v8`) and how an image index entry is chosen for one.

use std::fmt;
use std::str::FromStr;

use crate::RegistryError;

/// An OS, CPU architecture and optional variant, as in OCI image indexes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`, `windows`, …
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, `arm`, `386`, `ppc64le`, `s390x`, `riscv64`, …
    pub architecture: String,
    /// CPU variant (`v7` for arm, `v8` for arm64), if any.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this program runs on (`linux/amd64`, `linux/arm64`, …).
    pub fn host() -> Platform {
        let os = match std::env::consts::OS {
            "macos" => "darwin",
            other => other,
        };
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "mips64" if cfg!(target_endian = "little") => "mips64le",
            "mips" if cfg!(target_endian = "little") => "mipsle",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    /// Whether an image for `candidate` can serve a request for `self`.
    ///
    /// OS and architecture must be equal. A requested variant must equal the candidate's after
    /// normalisation (arm64 without variant is `v8`, arm without variant is `v7`, amd64 without
    /// variant is `v1`); a request without variant accepts any variant.
    pub fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match &self.variant {
            None => true,
            Some(_) => self.normalized_variant() == candidate.normalized_variant(),
        }
    }

    /// Ranks the candidates that [`matches`](Self::matches), best first: an exact variant match
    /// (after normalisation) beats any other variant. Returns the index of the best one.
    pub fn select<'a>(&self, candidates: impl IntoIterator<Item = &'a Platform>) -> Option<usize> {
        let wanted = self.normalized_variant();
        let mut best: Option<(usize, bool)> = None;
        for (i, c) in candidates.into_iter().enumerate() {
            if !self.matches(c) {
                continue;
            }
            let exact = c.normalized_variant() == wanted;
            match best {
                Some((_, true)) => {}
                Some((_, false)) if !exact => {}
                _ => best = Some((i, exact)),
            }
        }
        best.map(|(i, _)| i)
    }

    /// The variant with the architecture's default filled in.
    fn normalized_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", None | Some("8") | Some("v8")) => Some("v8"),
            ("arm", None) => Some("v7"),
            ("arm", Some("7")) => Some("v7"),
            ("arm", Some("6")) => Some("v6"),
            ("arm", Some("5")) => Some("v5"),
            ("amd64", None) => Some("v1"),
            (_, v) => v,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = RegistryError;

    /// Parses `os/arch[/variant]`, lowercasing and normalising architecture aliases
    /// (`x86_64` → `amd64`, `aarch64` → `arm64`, `armhf` → `arm/v7`, `armel` → `arm/v6`).
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| RegistryError::InvalidPlatform {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let lower = input.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(bad("it must have two or three parts separated by '/'"));
        }
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        if !parts.iter().all(|p| valid(p)) {
            return Err(bad(
                "each part must be a non-empty word of letters, digits, '_', '-' or '.'",
            ));
        }
        let mut variant = parts.get(2).map(|v| v.to_string());
        let architecture = match parts[1] {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            "i386" | "i686" | "x86" => "386",
            "armhf" => {
                variant.get_or_insert_with(|| "v7".into());
                "arm"
            }
            "armel" => {
                variant.get_or_insert_with(|| "v6".into());
                "arm"
            }
            other => other,
        }
        .to_string();
        Ok(Platform {
            os: parts[0].to_string(),
            architecture,
            variant,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(
            p("linux/amd64"),
            Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None
            }
        );
        assert_eq!(p("linux/arm64/v8").variant.as_deref(), Some("v8"));
        assert_eq!(p("Linux/X86_64").to_string(), "linux/amd64");
        assert_eq!(p("linux/aarch64").to_string(), "linux/arm64");
        assert_eq!(p("linux/armhf").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/arm/v6").to_string(), "linux/arm/v6");
        for bad in [
            "linux",
            "",
            "linux/",
            "/amd64",
            "a/b/c/d",
            "linux/am d64",
            "linux//v7",
        ] {
            let e = bad.parse::<Platform>().unwrap_err();
            assert!(matches!(e, RegistryError::InvalidPlatform { .. }), "{bad}");
        }
    }

    #[test]
    fn host_is_normalized() {
        let h = Platform::host();
        assert!(!h.os.is_empty());
        assert!(!["x86_64", "aarch64"].contains(&h.architecture.as_str()));
        if cfg!(all(target_arch = "x86_64", target_os = "linux")) {
            assert_eq!(h.to_string(), "linux/amd64");
        }
    }

    #[test]
    fn matching_rules() {
        assert!(p("linux/amd64").matches(&p("linux/amd64")));
        assert!(!p("linux/amd64").matches(&p("linux/arm64")));
        assert!(!p("linux/amd64").matches(&p("windows/amd64")));
        // arm64: no variant is v8.
        assert!(p("linux/arm64/v8").matches(&p("linux/arm64")));
        assert!(p("linux/arm64").matches(&p("linux/arm64/v8")));
        // arm: no variant in the descriptor means v7.
        assert!(p("linux/arm/v7").matches(&p("linux/arm")));
        assert!(!p("linux/arm/v6").matches(&p("linux/arm")));
        assert!(!p("linux/arm/v7").matches(&p("linux/arm/v6")));
        assert!(p("linux/arm").matches(&p("linux/arm/v6")));
        // amd64 levels.
        assert!(!p("linux/amd64/v3").matches(&p("linux/amd64")));
        assert!(p("linux/amd64/v1").matches(&p("linux/amd64")));
    }

    #[test]
    fn prefers_exact_variant() {
        let cands = [
            p("linux/arm/v6"),
            p("linux/arm/v7"),
            p("linux/arm64"),
            p("linux/amd64"),
        ];
        assert_eq!(p("linux/arm").select(&cands), Some(1));
        assert_eq!(p("linux/arm/v6").select(&cands), Some(0));
        assert_eq!(p("linux/arm64/v8").select(&cands), Some(2));
        assert_eq!(p("linux/s390x").select(&cands), None);
        let only_v6 = [p("linux/arm/v6")];
        assert_eq!(p("linux/arm").select(&only_v6), Some(0));
        let cands = [p("linux/amd64/v3"), p("linux/amd64")];
        assert_eq!(p("linux/amd64").select(&cands), Some(1));
    }
}
