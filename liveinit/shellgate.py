"""The emergency shell's lock: a password baked at pack time as a crypt(3)
SHA-512 hash (`$6$salt$...`, what `openssl passwd -6` and `mkpasswd -m
sha-512` print), checked here in pure Python over the interpreter's SHA-512
(no libcrypt, no hashlib in the image).

SHA-crypt is Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512"
(https://www.akkadia.org/drepper/SHA-crypt.txt), steps numbered as there."""
from __future__ import annotations

from liveinit.digest import sha512

ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ROUNDS_DEFAULT = 5000
ROUNDS_MIN, ROUNDS_MAX = 1000, 999_999_999
SALT_MAX = 16
# The spec's byte order of the final 64-byte digest, three bytes per four characters.
ORDER = ((0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
         (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
         (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19),
         (62, 20, 41))


def parse(text: str) -> tuple[int, bool, str, str]:
    """`$6$[rounds=N$]salt$digest` -> (rounds, rounds given, salt, digest); ValueError if not."""
    if not text.startswith("$6$"):
        raise ValueError("not a SHA-512 crypt hash (it must start with $6$; make one with "
                         "`openssl passwd -6` or `mkpasswd -m sha-512`)")
    parts = text[3:].split("$")
    rounds, given = ROUNDS_DEFAULT, False
    if parts and parts[0].startswith("rounds="):
        value = parts.pop(0)[7:]
        if not value.isdigit():
            raise ValueError(f"rounds={value}: not a number")
        rounds, given = min(max(int(value), ROUNDS_MIN), ROUNDS_MAX), True
    if len(parts) != 2:
        raise ValueError("expected $6$[rounds=N$]SALT$DIGEST")
    salt, digest = parts
    if len(digest) != 86 or not set(digest) <= set(ITOA64):
        raise ValueError("the digest part must be 86 characters of [./0-9A-Za-z]")
    return rounds, given, salt[:SALT_MAX], digest


def _repeat(block: bytes, n: int) -> bytes:
    return (block * (n // len(block) + 1))[:n]


def sha512_crypt(password: bytes, salt: str, rounds: int = ROUNDS_DEFAULT, rounds_given: bool = False) -> str:
    """crypt(3) with a `$6$` setting: the full hash string."""
    p, s = password, salt[:SALT_MAX].encode()
    b = sha512(p + s + p).digest()                          # steps 4-8
    a = sha512(p + s)                                        # steps 1-3
    a.update(_repeat(b, len(p)))                             # steps 9-10
    n = len(p)
    while n:                                                 # step 11
        a.update(b if n & 1 else p)
        n >>= 1
    c = a.digest()                                           # step 12
    dp = sha512(p * len(p)).digest()                         # steps 13-15
    pseq = _repeat(dp, len(p))                               # step 16
    ds = sha512(s * (16 + c[0])).digest()                    # steps 17-19
    sseq = _repeat(ds, len(s))                               # step 20
    for i in range(rounds):                                  # step 21
        h = sha512(pseq if i & 1 else c)
        if i % 3:
            h.update(sseq)
        if i % 7:
            h.update(pseq)
        h.update(c if i & 1 else pseq)
        c = h.digest()
    out = []
    for x, y, z in ORDER:                                    # step 22
        w = (c[x] << 16) | (c[y] << 8) | c[z]
        for _ in range(4):
            out.append(ITOA64[w & 63])
            w >>= 6
    w = c[63]
    for _ in range(2):
        out.append(ITOA64[w & 63])
        w >>= 6
    head = f"$6$rounds={rounds}$" if rounds_given else "$6$"
    return head + salt[:SALT_MAX] + "$" + "".join(out)


def check(password: str, hashed: str) -> bool:
    """Whether `password` matches the `$6$` hash (compared in constant time)."""
    rounds, given, salt, _ = parse(hashed)
    mine = sha512_crypt(password.encode(), salt, rounds, given)
    diff = len(mine) ^ len(hashed)
    for x, y in zip(mine, hashed, strict=False):
        diff |= ord(x) ^ ord(y)
    return diff == 0
