/*
 * status.h -- the native core's one error convention: a function returns 0 (SKV_OK) or a count on success,
 * and one of these negative codes on failure. Python turns them into exceptions in one place
 * (seqkv_edge/native.py, check). @cffi
 */
#ifndef SEQKV_STATUS_H
#define SEQKV_STATUS_H

#define SKV_OK 0
#define SKV_ERR_ARGUMENT -1    /* inconsistent sizes, shapes or values given by the caller */
#define SKV_ERR_UNSUPPORTED -2 /* a type, layout or value range the coder does not handle */
#define SKV_ERR_MEMORY -3      /* an allocation failed */
#define SKV_ERR_CORRUPT -4     /* the input is truncated, damaged, desynchronised or fails its checksum */
#define SKV_ERR_MISMATCH -5    /* the input describes another type, layout or shape than the one asked for */
#define SKV_ERR_CAPACITY -6    /* the output buffer is too small */
#define SKV_ERR_THREAD -7      /* a worker thread could not be started */
#define SKV_ERR_DEVICE -8      /* a GPU runtime call failed */

#endif /* SEQKV_STATUS_H */
