//! What meshctl parses from files users write, apart from the binary so fuzz
//! targets and other tools can run exactly that code.

pub mod drill {
    //! Drill scenario files (`meshctl drill run FILE`).
    pub mod scenario;
}
