// SPDX-License-Identifier: GPL-2.0

//! KFlex logic that needs no kernel API, shared by the kernel component and
//! the host tests.
