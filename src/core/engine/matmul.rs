//! Dense products for the engine's layers, by `nano-gemm` (the small-matrix kernels of the
//! author of `gemm` and `faer`). A [`Product`] is planned once per shape, when a phase's buffers
//! are made; running it allocates nothing (a general GEMM call packs its operands into freshly
//! allocated buffers, which for 10 x 40 x 40 products costs more than the arithmetic).
//!
//! Matrices are strided views; the engine keeps every buffer row-major, and plans each product
//! in the transposed, column-major form `C^T = B^T A^T` where that gives unit-stride operands.

/// The shape and strides of a matrix: element `(i, j)` at `i * row_stride + j * col_stride`.
#[derive(Clone, Copy)]
struct Layout {
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl Layout {
    fn row_major(len: usize, rows: usize, cols: usize) -> Self {
        assert!(len >= rows * cols, "matrix view out of bounds");
        Layout {
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    fn t(self) -> Self {
        Layout {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// The largest index the view touches, plus one.
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
        }
    }
}

/// A read-only strided matrix over a slice.
#[derive(Clone, Copy)]
pub struct View<'a> {
    data: &'a [f64],
    layout: Layout,
}

/// A writable strided matrix over a slice.
pub struct ViewMut<'a> {
    data: &'a mut [f64],
    layout: Layout,
}

impl<'a> View<'a> {
    /// `data` read as a row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f64], rows: usize, cols: usize) -> Self {
        View {
            layout: Layout::row_major(data.len(), rows, cols),
            data,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        View {
            layout: self.layout.t(),
            ..self
        }
    }
}

impl<'a> ViewMut<'a> {
    /// `data` written as a row-major `rows x cols` matrix.
    pub fn row_major(data: &'a mut [f64], rows: usize, cols: usize) -> Self {
        ViewMut {
            layout: Layout::row_major(data.len(), rows, cols),
            data,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        ViewMut {
            layout: self.layout.t(),
            data: self.data,
        }
    }
}

/// A planned product `C = A B` of an `m x k` and a `k x n` matrix.
#[derive(Clone, Copy)]
pub struct Product {
    plan: nano_gemm::Plan<f64>,
    m: usize,
    k: usize,
    n: usize,
    /// Planned for unit row strides of `A` and `C` (the kernels' fast case).
    column_major: bool,
}

// SAFETY: a plan holds function pointers and pointers to static masks, nothing thread-bound.
unsafe impl Send for Product {}
unsafe impl Sync for Product {}

impl std::fmt::Debug for Product {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Product({} x {} x {})", self.m, self.k, self.n)
    }
}

impl Product {
    /// Plans `C = A B` for `A` of `m x k` and `B` of `k x n`; `column_major` promises that `A`
    /// and `C` will have unit row strides.
    pub fn new(m: usize, k: usize, n: usize, column_major: bool) -> Self {
        Product {
            plan: nano_gemm::Plan::new_f64_impl(m, n, k, column_major),
            m,
            k,
            n,
            column_major,
        }
    }

    /// `c = a b` (overwritten). Panics on shapes or strides other than planned, and on views out
    /// of their slices' bounds, which would be a bug in the engine.
    pub fn run(&self, a: View, b: View, c: ViewMut) {
        self.execute(a, b, c, 0.0);
    }

    /// `c += a b`: the second half of a sum of two products (the R-operator's passes,
    /// docs/ENGINE.md §4), same checks as [`Product::run`].
    pub fn run_add(&self, a: View, b: View, c: ViewMut) {
        self.execute(a, b, c, 1.0);
    }

    /// `c = keep c + a b` with `keep` 0 or 1.
    fn execute(&self, a: View, b: View, c: ViewMut, keep: f64) {
        let (la, lb, lc) = (a.layout, b.layout, c.layout);
        assert_eq!(
            (la.rows, la.cols, lb.rows, lb.cols),
            (self.m, self.k, self.k, self.n),
            "unplanned shape"
        );
        assert_eq!((lc.rows, lc.cols), (self.m, self.n), "unplanned output shape");
        if self.column_major {
            assert!(
                la.row_stride == 1 && lc.row_stride == 1,
                "planned for unit row strides"
            );
        }
        assert!(la.extent() <= a.data.len() && lb.extent() <= b.data.len() && lc.extent() <= c.data.len());
        // SAFETY: shapes match the plan and every view stays inside its slice (checked above);
        // `c` is a unique borrow, so it aliases neither input. With alpha (`keep`) = 0 the old
        // contents of `c` are not used.
        unsafe {
            self.plan.execute_unchecked(
                self.m,
                self.n,
                self.k,
                c.data.as_mut_ptr(),
                lc.row_stride as isize,
                lc.col_stride as isize,
                a.data.as_ptr(),
                la.row_stride as isize,
                la.col_stride as isize,
                b.data.as_ptr(),
                lb.row_stride as isize,
                lb.col_stride as isize,
                keep,
                1.0,
                false,
                false,
            )
        }
    }
}
