//! Why a scenario, a report or the results record could not be read or written.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A scenario, or the results record, is not valid: what is wrong, by field.
    #[error("{0}")]
    Invalid(String),
}

impl DrillError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}

/// Refuses with [`DrillError::Invalid`] unless `cond` holds (a NaN compared is
/// refused: the condition is checked as a whole, then negated).
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {{
        let holds: bool = $cond;
        if !holds {
            return Err($crate::error::DrillError::Invalid(format!($($msg)+)));
        }
    }};
}

/// Refuses with [`DrillError::Invalid`].
macro_rules! bail {
    ($($msg:tt)+) => {
        return Err($crate::error::DrillError::Invalid(format!($($msg)+)))
    };
}

pub(crate) use {bail, ensure};
