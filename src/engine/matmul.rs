//! Dense products for the engine's layers, by the `gemm` crate (the one Candle uses), on
//! row-major buffers. One thread: tasks, not products, are what runs in parallel.

/// A row-major matrix view: `rows x cols`, element `(i, j)` at `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f64],
    pub rows: usize,
    pub cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl<'a> View<'a> {
    /// The first `rows * cols` entries of `data` as a row-major `rows x cols` matrix.
    pub fn new(data: &'a [f64], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols, "matrix view out of bounds");
        View {
            data,
            rows,
            cols,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// `c = a b`, with `c` row-major `a.rows x b.cols` (overwritten).
pub fn matmul(a: View, b: View, c: &mut [f64]) {
    assert_eq!(a.cols, b.rows, "inner dimensions of a product must agree");
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(c.len() >= m * n, "product output out of bounds");
    // SAFETY: every pointer stays within its slice for the given shapes and strides (checked
    // above and in `View::new`); `c` does not alias `a` or `b` (it is a unique borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.col_stride,
            a.row_stride,
            b.data.as_ptr(),
            b.col_stride,
            b.row_stride,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}
