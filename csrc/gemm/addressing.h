// Where the micro-kernel finds the elements of its A and B panels: packed panels, or operands
// read in place through offset tables. The micro-kernel is a template over these policies.
#pragma once

#include "common/prelude.h"
#include "gemm/tile.h"

namespace pyconv {
namespace PYCONV_ISA {

enum class Store { overwrite, accumulate };

// Where row k of a B panel starts: a packed panel steps by NR; a panel read in place (see
// InMatrixB::rows_in_place) follows its row offsets.
template <class T, int NR = gemm_nr<T>()>
struct PackedRows {
    const T* b;
    const T* operator()(int64_t k) const { return b + k * NR; }
};
// A panel read in place whose rows lie `stride` apart: a panel narrower than NR stored at its
// own width, so that the rows' unused columns are not fetched with the used ones.
template <class T>
struct StridedRows {
    const T* b;
    int64_t stride;
    const T* operator()(int64_t k) const { return b + k * stride; }
};
template <class T>
struct OffsetRows {
    const T* base;
    const int64_t* offsets;
    const T* operator()(int64_t k) const { return base + offsets[k]; }
};

// Where element (i, k) of an A panel is: a packed panel steps by MR with its rows adjacent; an
// A read in place sits at base + k_offsets[k] + i_offsets[i] (the channel-vectorised
// convolutions of conv/by_channels.h: a tap's offset plus a pixel's, in either role).
template <class T>
struct PackedCols {
    static constexpr int rows = GemmTile<T>::MR;
    const T* a;
    const T* col(int64_t k) const { return a + k * rows; }
    int64_t row(int i) const { return i; }
};
template <class T, int MR>
struct OffsetCols {
    static constexpr int rows = MR;
    const T* base;
    const int64_t* k_offsets;
    int64_t i_offsets[MR];
    const T* col(int64_t k) const { return base + k_offsets[k]; }
    int64_t row(int i) const { return i_offsets[i]; }
};

// An A read in place by rows: row i at base + i_offsets[i], its elements k contiguous (a
// dense product's x, see RowMajorA in gemm/operands.h).
template <class T>
struct RowsInPlaceCols {
    static constexpr int rows = GemmTile<T>::MR;
    const T* base;
    int64_t i_offsets[rows];
    const T* col(int64_t k) const { return base + k; }
    int64_t row(int i) const { return i_offsets[i]; }
};

}  // namespace PYCONV_ISA
}  // namespace pyconv
