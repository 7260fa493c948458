//! TEMPORARY compile stub; replaced by the promql branch.
use crate::model::{Labels, Sample};
use crate::storage::Querier;
use std::fmt;
pub struct EngineOptions {
    pub lookback_delta_ms: i64,
    pub max_samples: usize,
}
pub struct Engine {
    _o: EngineOptions,
}
pub struct QueryResult {
    pub value: Value,
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
}
pub enum Value {
    Scalar { t: i64, v: f64 },
    String { t: i64, s: String },
    Vector(Vec<VectorSample>),
    Matrix(Vec<RangeSeries>),
}
pub struct VectorSample {
    pub labels: Labels,
    pub t: i64,
    pub v: f64,
}
pub struct RangeSeries {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}
#[derive(Debug)]
pub enum QueryError {
    Parse(String),
    Execution(String),
    TooManySamples,
    Storage(crate::storage::StorageError),
}
impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}
impl Engine {
    pub fn new(o: EngineOptions) -> Self {
        Engine { _o: o }
    }
    pub async fn instant(
        &self,
        _q: &dyn Querier,
        _e: &str,
        t: i64,
    ) -> Result<QueryResult, QueryError> {
        Ok(QueryResult {
            value: Value::Scalar { t, v: 1.0 },
            warnings: vec![],
            infos: vec![],
        })
    }
    pub async fn range(
        &self,
        _q: &dyn Querier,
        _e: &str,
        _s: i64,
        _e2: i64,
        _st: i64,
    ) -> Result<QueryResult, QueryError> {
        Err(QueryError::Execution("stub".into()))
    }
}
