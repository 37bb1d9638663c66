/*
 * libsrtp2 oracle for sluice's SRTP tests and `cargo xtask bench srtp`.
 *
 * Interop mode (no arguments): one command per line on stdin, one answer per line on stdout.
 *   init PROFILE HEXKEY [rtcp-auth-only]
 *                         create a sender and a receiver session, both keyed with HEXKEY
 *                         (master key || master salt); with rtcp-auth-only the sender sends
 *                         SRTCP unencrypted (E flag 0); answers "ok"
 *   p HEX / u HEX         srtp_protect / srtp_unprotect one RTP packet
 *   pc HEX / uc HEX       srtp_protect_rtcp / srtp_unprotect_rtcp one RTCP packet
 *   answers "ok HEX" or "err CODE" (libsrtp's srtp_err_status_t)
 *
 * Bench mode: harness bench PROFILE PACKETS PAYLOAD_LEN
 *   protects and unprotects PACKETS RTP packets in chunks of 1024 (fresh sequence numbers,
 *   ROC rolling over) and prints "protect_ns X unprotect_ns Y" per packet.
 *
 * PROFILE is an SDES suite name: AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32,
 * AEAD_AES_128_GCM, AEAD_AES_256_GCM.
 */
#include <srtp2/srtp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_PACKET 4096

static int set_profile(srtp_policy_t *p, const char *name, size_t *key_len)
{
    if (strcmp(name, "AES_CM_128_HMAC_SHA1_80") == 0) {
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&p->rtp);
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&p->rtcp);
        *key_len = 30;
    } else if (strcmp(name, "AES_CM_128_HMAC_SHA1_32") == 0) {
        /* RFC 4568 6.2.2: SRTCP keeps the 80-bit tag. */
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32(&p->rtp);
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&p->rtcp);
        *key_len = 30;
    } else if (strcmp(name, "AEAD_AES_128_GCM") == 0) {
        srtp_crypto_policy_set_aes_gcm_128_16_auth(&p->rtp);
        srtp_crypto_policy_set_aes_gcm_128_16_auth(&p->rtcp);
        *key_len = 28;
    } else if (strcmp(name, "AEAD_AES_256_GCM") == 0) {
        srtp_crypto_policy_set_aes_gcm_256_16_auth(&p->rtp);
        srtp_crypto_policy_set_aes_gcm_256_16_auth(&p->rtcp);
        *key_len = 44;
    } else {
        return -1;
    }
    return 0;
}

static int create(srtp_t *s, const char *profile, uint8_t *key, int inbound, int rtcp_auth_only)
{
    srtp_policy_t p;
    size_t key_len;
    memset(&p, 0, sizeof(p));
    if (set_profile(&p, profile, &key_len) != 0)
        return -1;
    if (rtcp_auth_only)
        p.rtcp.sec_serv = sec_serv_auth;
    p.ssrc.type = inbound ? ssrc_any_inbound : ssrc_any_outbound;
    p.key = key;
    p.window_size = 128;
    p.allow_repeat_tx = 0;
    return srtp_create(s, &p) == srtp_err_status_ok ? 0 : -1;
}

static int unhex(const char *s, uint8_t *out, size_t cap)
{
    size_t n = strlen(s);
    if (n % 2 != 0 || n / 2 > cap)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (uint8_t)v;
    }
    return (int)(n / 2);
}

static void answer(srtp_err_status_t st, const uint8_t *buf, int len)
{
    if (st != srtp_err_status_ok) {
        printf("err %d\n", (int)st);
    } else {
        fputs("ok ", stdout);
        for (int i = 0; i < len; i++)
            printf("%02x", buf[i]);
        putchar('\n');
    }
    fflush(stdout);
}

static int interop(void)
{
    static char line[3 * MAX_PACKET];
    static uint8_t buf[MAX_PACKET + 64];
    static uint8_t key[64];
    srtp_t tx = NULL, rx = NULL;
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = 0;
        char *cmd = strtok(line, " ");
        char *arg = strtok(NULL, " ");
        if (!cmd)
            continue;
        if (strcmp(cmd, "init") == 0) {
            char *hexkey = strtok(NULL, " ");
            char *option = strtok(NULL, " ");
            int auth_only = option && strcmp(option, "rtcp-auth-only") == 0;
            if (!arg || !hexkey || unhex(hexkey, key, sizeof key) < 0) {
                puts("err bad-init");
                fflush(stdout);
                continue;
            }
            if (tx)
                srtp_dealloc(tx);
            if (rx)
                srtp_dealloc(rx);
            tx = rx = NULL;
            if (create(&tx, arg, key, 0, auth_only) != 0 ||
                create(&rx, arg, key, 1, auth_only) != 0) {
                puts("err init-failed");
            } else {
                puts("ok");
            }
            fflush(stdout);
            continue;
        }
        int len = arg ? unhex(arg, buf, MAX_PACKET) : -1;
        if (len < 0 || !tx) {
            puts("err bad-command");
            fflush(stdout);
            continue;
        }
        srtp_err_status_t st;
        if (strcmp(cmd, "p") == 0)
            st = srtp_protect(tx, buf, &len);
        else if (strcmp(cmd, "u") == 0)
            st = srtp_unprotect(rx, buf, &len);
        else if (strcmp(cmd, "pc") == 0)
            st = srtp_protect_rtcp(tx, buf, &len);
        else if (strcmp(cmd, "uc") == 0)
            st = srtp_unprotect_rtcp(rx, buf, &len);
        else {
            puts("err bad-command");
            fflush(stdout);
            continue;
        }
        answer(st, buf, len);
    }
    return 0;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

#define CHUNK 1024
#define SLOT 256

static int bench(const char *profile, long packets, int payload)
{
    static uint8_t bufs[CHUNK][SLOT];
    static int lens[CHUNK];
    uint8_t key[64];
    srtp_t tx, rx;
    if (payload < 0 || 12 + payload + 16 > SLOT)
        return 2;
    for (int i = 0; i < (int)sizeof key; i++)
        key[i] = (uint8_t)(i * 7 + 1);
    if (create(&tx, profile, key, 0, 0) != 0 || create(&rx, profile, key, 1, 0) != 0) {
        fprintf(stderr, "cannot create a %s session\n", profile);
        return 1;
    }
    uint16_t seq = 0;
    double t_protect = 0, t_unprotect = 0;
    long done = 0;
    while (done < packets) {
        for (int i = 0; i < CHUNK; i++) {
            uint8_t *b = bufs[i];
            memset(b, 0xd5, 12 + payload);
            b[0] = 0x80;
            b[1] = 0;
            b[2] = seq >> 8;
            b[3] = seq & 0xff;
            uint32_t ts = (uint32_t)seq * 160;
            b[4] = ts >> 24;
            b[5] = ts >> 16;
            b[6] = ts >> 8;
            b[7] = ts;
            b[8] = 0x12;
            b[9] = 0x34;
            b[10] = 0x56;
            b[11] = 0x78;
            lens[i] = 12 + payload;
            seq++;
        }
        double t0 = now_ns();
        for (int i = 0; i < CHUNK; i++) {
            if (srtp_protect(tx, bufs[i], &lens[i]) != srtp_err_status_ok) {
                fprintf(stderr, "protect failed\n");
                return 1;
            }
        }
        double t1 = now_ns();
        for (int i = 0; i < CHUNK; i++) {
            if (srtp_unprotect(rx, bufs[i], &lens[i]) != srtp_err_status_ok) {
                fprintf(stderr, "unprotect failed\n");
                return 1;
            }
        }
        double t2 = now_ns();
        t_protect += t1 - t0;
        t_unprotect += t2 - t1;
        done += CHUNK;
    }
    printf("protect_ns %.1f unprotect_ns %.1f\n", t_protect / done, t_unprotect / done);
    srtp_dealloc(tx);
    srtp_dealloc(rx);
    return 0;
}

int main(int argc, char **argv)
{
    if (srtp_init() != srtp_err_status_ok) {
        fprintf(stderr, "srtp_init failed\n");
        return 1;
    }
    if (argc == 5 && strcmp(argv[1], "bench") == 0)
        return bench(argv[2], atol(argv[3]), atoi(argv[4]));
    if (argc != 1) {
        fprintf(stderr, "usage: %s | %s bench PROFILE PACKETS PAYLOAD_LEN\n", argv[0], argv[0]);
        return 2;
    }
    return interop();
}
