#!/usr/bin/python3
"""Generates the built-in demo problem set (problems.jsonl beside this file).

Deterministic: run `/usr/bin/python3 pipelines/data/demo/generate.py` and the
output is byte-identical. Problems come in families of related tasks (same
task, other constants, formats or wording) whose reference solutions share one
short shape, so a tiny model can learn the templates; in each family the
members at positions 1, 4, ... are held out for evaluation (split "eval").
Expected outputs are computed by running each reference solution here, and a
test (test/data-demo.test.ts) re-runs every solution with /usr/bin/python3.
"""
import contextlib
import hashlib
import io
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS_PER_PROBLEM = 6

# ------------------------------------------------------------ input makers

def ints_line(lo=-50, hi=50, nmin=1, nmax=12):
    def g(r):
        n = r.randint(nmin, nmax)
        return f"{n}\n{' '.join(str(r.randint(lo, hi)) for _ in range(n))}\n"
    return g

def ints_col(lo=-50, hi=50, nmin=1, nmax=10):
    def g(r):
        n = r.randint(nmin, nmax)
        return f"{n}\n" + "".join(f"{r.randint(lo, hi)}\n" for _ in range(n))
    return g

def one_int(lo, hi):
    return lambda r: f"{r.randint(lo, hi)}\n"

def two_ints(lo, hi):
    return lambda r: f"{r.randint(lo, hi)} {r.randint(lo, hi)}\n"

WORDS = "apple banana cherry date fig grape kiwi lemon mango pear plum berry melon olive".split()

def text_line(alphabet="abcdeABCDE xyz019", nmin=1, nmax=20):
    return lambda r: "".join(r.choice(alphabet) for _ in range(r.randint(nmin, nmax))).strip("") + "\n"

def word_line(nmin=1, nmax=8, pool=WORDS):
    return lambda r: " ".join(r.choice(pool) for _ in range(r.randint(nmin, nmax))) + "\n"

def pal_word(alphabet="abc"):
    def g(r):
        half = "".join(r.choice(alphabet) for _ in range(r.randint(0, 4)))
        if r.random() < 0.5:
            return half + r.choice(["", r.choice(alphabet)]) + half[::-1] + "\n"
        return half + "".join(r.choice(alphabet) for _ in range(r.randint(1, 4))) + "\n"
    return g

def grid(chars=".#"):
    def g(r):
        h, w = r.randint(1, 5), r.randint(1, 5)
        rows = ["".join(r.choice(chars) for _ in range(w)) for _ in range(h)]
        return f"{h} {w}\n" + "".join(x + "\n" for x in rows)
    return g

def square(lo=-9, hi=9):
    def g(r):
        n = r.randint(1, 5)
        return f"{n}\n" + "".join(" ".join(str(r.randint(lo, hi)) for _ in range(n)) + "\n" for _ in range(n))
    return g

def queries(lo=-20, hi=20):
    def g(r):
        n = r.randint(1, 10)
        a = [r.randint(lo, hi) for _ in range(n)]
        q = r.randint(1, 5)
        qs = []
        for _ in range(q):
            l = r.randint(1, n)
            qs.append(f"{l} {r.randint(l, n)}")
        return f"{n}\n{' '.join(map(str, a))}\n{q}\n" + "".join(x + "\n" for x in qs)
    return g

def brackets(chars="()"):
    def g(r):
        n = r.randint(1, 12)
        if r.random() < 0.4:
            s, depth = "", []
            for _ in range(n):
                if depth and r.random() < 0.5:
                    s += {"(": ")", "[": "]", "{": "}"}[depth.pop()]
                else:
                    c = r.choice([x for x in chars if x in "([{"])
                    depth.append(c)
                    s += c
            s += "".join({"(": ")", "[": "]", "{": "}"}[c] for c in reversed(depth))
            return s + "\n"
        return "".join(r.choice(chars) for _ in range(n)) + "\n"
    return g

def two_words(alphabet="abc"):
    return lambda r: "".join(r.choice(alphabet) for _ in range(r.randint(1, 7))) + "\n" + "".join(
        r.choice(alphabet) for _ in range(r.randint(1, 7))) + "\n"

def list_and_k(lo=-10, hi=10, klo=-5, khi=15):
    def g(r):
        n = r.randint(4, 10)
        return f"{n} {r.randint(klo, khi)}\n{' '.join(str(r.randint(lo, hi)) for _ in range(n))}\n"
    return g

def window_k():
    def g(r):
        n = r.randint(1, 10)
        return f"{n} {r.randint(1, n)}\n{' '.join(str(r.randint(-20, 20)) for _ in range(n))}\n"
    return g

def clock():
    return lambda r: f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}\n"

# ------------------------------------------------------------ families
# Each member: (key, title, task sentence, output sentence, solution, trace[, difficulty, gen, input sentence])

LIST_IN = "The first line contains an integer n (1 ≤ n ≤ 100). The second line contains n integers a_1, ..., a_n (|a_i| ≤ 1000)."
COL_IN = "The first line contains an integer n (1 ≤ n ≤ 100). Each of the next n lines contains one integer (|a_i| ≤ 1000)."
POS_IN = "The first line contains an integer n (1 ≤ n ≤ 100). The second line contains n integers a_1, ..., a_n (1 ≤ a_i ≤ 100)."
READ = "n = int(input())\na = list(map(int, input().split()))\n"
READ_COL = "n = int(input())\na = [int(input()) for _ in range(n)]\n"
STR_IN = "A single line contains a string s of at most 100 characters."
READ_S = "s = input()\n"

FAMILIES = []

def family(name, difficulty, inp, gen, members):
    FAMILIES.append((name, difficulty, inp, gen, members))

family("sum", "easy", LIST_IN, ints_line(), [
    ("sum", "Sum of Numbers", "Print the sum of the n numbers.", "Print one integer: the sum.",
     READ + "print(sum(a))", "The answer is the total of all numbers, so read the list and print sum(a)."),
    ("sum-mod-7", "Sum Modulo 7", "Print the sum of the n numbers modulo 7.", "Print one integer from 0 to 6.",
     READ + "print(sum(a) % 7)", "Add all numbers and take the result modulo 7; Python's % already gives a value from 0 to 6."),
    ("sum-squares", "Sum of Squares", "Print the sum of the squares of the n numbers.", "Print one integer.",
     READ + "print(sum(x * x for x in a))", "Square every number and add the squares, so print sum(x * x for x in a)."),
    ("sum-lines", "Sum of Numbers, One per Line", "Print the sum of the n numbers.", "Print one integer: the sum.",
     READ_COL + "print(sum(a))", "The numbers come one per line, so read n lines and print their sum.", None, ints_col(), COL_IN),
    ("sum-abs", "Sum of Absolute Values", "Print the sum of the absolute values of the n numbers.", "Print one integer.",
     READ + "print(sum(abs(x) for x in a))", "Take the absolute value of each number and add them: print sum(abs(x) for x in a)."),
    ("sum-mod-1000", "Sum Modulo 1000", "Print the sum of the n numbers modulo 1000.", "Print one integer from 0 to 999.",
     READ + "print(sum(a) % 1000)", "Add all numbers and take the result modulo 1000 with Python's %."),
])

family("product", "easy", POS_IN, ints_line(1, 100), [
    ("product-mod-7", "Product Modulo 7", "Print the product of the n numbers modulo 7.", "Print one integer from 0 to 6.",
     READ + "p = 1\nfor x in a:\n    p = p * x % 7\nprint(p)", "Multiply the numbers one by one, reducing modulo 7 after each step to keep p small."),
    ("product-mod-11", "Product Modulo 11", "Print the product of the n numbers modulo 11.", "Print one integer from 0 to 10.",
     READ + "p = 1\nfor x in a:\n    p = p * x % 11\nprint(p)", "Multiply the numbers one by one, reducing modulo 11 after each step."),
    ("product-mod-1000", "Last Three Digits of a Product", "Print the product of the n numbers modulo 1000.", "Print one integer from 0 to 999.",
     READ + "p = 1\nfor x in a:\n    p = p * x % 1000\nprint(p)", "Only the product modulo 1000 matters, so multiply and reduce modulo 1000 after each step."),
    ("product-mod-13", "Product Modulo 13", "Print the product of the n numbers modulo 13.", "Print one integer from 0 to 12.",
     READ + "p = 1\nfor x in a:\n    p = p * x % 13\nprint(p)", "Multiply the numbers one by one, reducing modulo 13 after each step."),
    ("product-mod-1e9", "Product Modulo 10^9+7", "Print the product of the n numbers modulo 1000000007.", "Print one integer.",
     READ + "p = 1\nfor x in a:\n    p = p * x % 1000000007\nprint(p)", "Multiply the numbers one by one, reducing modulo 1000000007 after each step."),
])

family("extremes", "easy", LIST_IN, ints_line(), [
    ("max", "Largest Number", "Print the largest of the n numbers.", "Print one integer.",
     READ + "print(max(a))", "The answer is the maximum of the list, so print max(a)."),
    ("min", "Smallest Number", "Print the smallest of the n numbers.", "Print one integer.",
     READ + "print(min(a))", "The answer is the minimum of the list, so print min(a)."),
    ("range", "Spread of the Numbers", "Print the difference between the largest and the smallest number.", "Print one integer.",
     READ + "print(max(a) - min(a))", "The spread is the maximum minus the minimum, so print max(a) - min(a)."),
    ("max-plus-min", "Largest Plus Smallest", "Print the sum of the largest and the smallest number.", "Print one integer.",
     READ + "print(max(a) + min(a))", "Find the maximum and the minimum and print their sum."),
    ("argmax", "Position of the Maximum", "Print the 1-based position of the first occurrence of the largest number.", "Print one integer.",
     READ + "print(a.index(max(a)) + 1)", "a.index(max(a)) gives the first 0-based position of the maximum; add 1 for a 1-based answer."),
])

family("count", "easy", LIST_IN, ints_line(-20, 20), [
    ("count-positive", "Count Positive Numbers", "Print how many of the numbers are greater than 0.", "Print one integer.",
     READ + "print(sum(1 for x in a if x > 0))", "Count the numbers that satisfy x > 0."),
    ("count-even", "Count Even Numbers", "Print how many of the numbers are even.", "Print one integer.",
     READ + "print(sum(1 for x in a if x % 2 == 0))", "A number is even when x % 2 == 0; count those."),
    ("count-odd", "Count Odd Numbers", "Print how many of the numbers are odd.", "Print one integer.",
     READ + "print(sum(1 for x in a if x % 2 == 1))", "A number is odd when x % 2 == 1 (true for negatives too in Python); count those."),
    ("count-div-3", "Count Multiples of 3", "Print how many of the numbers are divisible by 3.", "Print one integer.",
     READ + "print(sum(1 for x in a if x % 3 == 0))", "Count the numbers with x % 3 == 0."),
    ("count-greater-10", "Count Numbers Above 10", "Print how many of the numbers are greater than 10.", "Print one integer.",
     READ + "print(sum(1 for x in a if x > 10))", "Count the numbers that satisfy x > 10."),
])

family("case", "easy", STR_IN, text_line(), [
    ("upper", "Shout It", "Print the string with every letter in upper case.", "Print one line.",
     READ_S + "print(s.upper())", "Python's s.upper() converts every letter to upper case and leaves other characters alone."),
    ("lower", "Whisper It", "Print the string with every letter in lower case.", "Print one line.",
     READ_S + "print(s.lower())", "Python's s.lower() converts every letter to lower case."),
    ("swapcase", "Swap the Case", "Print the string with upper-case letters made lower case and lower-case letters made upper case.", "Print one line.",
     READ_S + "print(s.swapcase())", "s.swapcase() flips the case of every letter."),
    ("reverse", "Backwards", "Print the string reversed.", "Print one line.",
     READ_S + "print(s[::-1])", "Slicing with step -1 reverses a string, so print s[::-1]."),
    ("reverse-upper", "Backwards and Loud", "Print the string reversed, with every letter in upper case.", "Print one line.",
     READ_S + "print(s[::-1].upper())", "Reverse with s[::-1], then convert to upper case."),
])

family("chars", "easy", STR_IN, text_line("aaeiouAbcdXYZ 0123", 1, 25), [
    ("count-vowels", "Count Vowels", "Print how many characters of s are vowels (a, e, i, o, u, in either case).", "Print one integer.",
     READ_S + "print(sum(1 for c in s if c in 'aeiouAEIOU'))", "Count the characters that belong to the vowel set 'aeiouAEIOU'."),
    ("count-digits", "Count Digits", "Print how many characters of s are decimal digits.", "Print one integer.",
     READ_S + "print(sum(1 for c in s if c.isdigit()))", "Count the characters for which c.isdigit() is true."),
    ("count-upper", "Count Capitals", "Print how many characters of s are upper-case letters.", "Print one integer.",
     READ_S + "print(sum(1 for c in s if c.isupper()))", "Count the characters for which c.isupper() is true."),
    ("count-a", "Count the Letter a", "Print how many times the lower-case letter a occurs in s.", "Print one integer.",
     READ_S + "print(sum(1 for c in s if c == 'a'))", "Count the characters equal to 'a'."),
    ("count-spaces", "Count Spaces", "Print how many characters of s are spaces.", "Print one integer.",
     READ_S + "print(sum(1 for c in s if c == ' '))", "Count the characters equal to a space."),
])

family("palindrome", "easy", "A single line contains a string s of lower-case letters (1 ≤ |s| ≤ 100).", pal_word(), [
    ("palindrome", "Palindrome Check", "Print YES if s reads the same forwards and backwards, otherwise NO.", "Print YES or NO.",
     READ_S + "print('YES' if s == s[::-1] else 'NO')", "A palindrome equals its reverse, so compare s with s[::-1]."),
    ("palindrome-number", "Palindromic Number", "A single line contains a non-negative integer x. Print YES if its decimal digits read the same backwards, otherwise NO.", "Print YES or NO.",
     READ_S + "print('YES' if s == s[::-1] else 'NO')", "Treat the number as a string of digits and compare it with its reverse.", None, lambda r: r.choice([str(r.randint(0, 99999)), "12321", "4554"]) + "\n", "A single line contains an integer x (0 ≤ x ≤ 10^9)."),
    ("palindrome-list", "Palindromic Sequence", "Print YES if the sequence reads the same forwards and backwards, otherwise NO.", "Print YES or NO.",
     READ + "print('YES' if a == a[::-1] else 'NO')", "Compare the list with its reverse a[::-1].", None,
     lambda r: (lambda h: f"{len(h)}\n{' '.join(map(str, h))}\n")(
         (lambda x: x + x[::-1] if r.random() < 0.5 else x + [r.randint(0, 3)])([r.randint(0, 3) for _ in range(r.randint(1, 4))])),
     LIST_IN),
    ("palindrome-ignore-case", "Palindrome, Any Case", "s may mix upper- and lower-case letters. Print YES if s reads the same forwards and backwards when case is ignored, otherwise NO.", "Print YES or NO.",
     READ_S + "s = s.lower()\nprint('YES' if s == s[::-1] else 'NO')", "Lower-case the string first, then compare it with its reverse.", "medium",
     lambda r: "".join(c.upper() if r.random() < 0.4 else c for c in pal_word("ab")(r).strip()) + "\n", "A single line contains a string s of letters (1 ≤ |s| ≤ 100)."),
])

family("fizzbuzz", "easy", "A single line contains an integer n (1 ≤ n ≤ 100).", one_int(1, 30), [
    ("fizzbuzz", "FizzBuzz", "For every i from 1 to n print Fizz if i is divisible by 3, Buzz if by 5, FizzBuzz if by both, otherwise i itself.", "Print n lines.",
     "n = int(input())\nfor i in range(1, n + 1):\n    s = ''\n    if i % 3 == 0:\n        s += 'Fizz'\n    if i % 5 == 0:\n        s += 'Buzz'\n    print(s or i)",
     "Build the word for each i from the two divisibility tests and print i when the word is empty."),
    ("foobar", "FooBar", "For every i from 1 to n print Foo if i is divisible by 2, Bar if by 7, FooBar if by both, otherwise i itself.", "Print n lines.",
     "n = int(input())\nfor i in range(1, n + 1):\n    s = ''\n    if i % 2 == 0:\n        s += 'Foo'\n    if i % 7 == 0:\n        s += 'Bar'\n    print(s or i)",
     "Same as FizzBuzz with divisors 2 and 7: build the word and print i when it is empty."),
    ("pingpong", "PingPong", "For every i from 1 to n print Ping if i is divisible by 4, Pong if by 6, PingPong if by both, otherwise i itself.", "Print n lines.",
     "n = int(input())\nfor i in range(1, n + 1):\n    s = ''\n    if i % 4 == 0:\n        s += 'Ping'\n    if i % 6 == 0:\n        s += 'Pong'\n    print(s or i)",
     "FizzBuzz with divisors 4 and 6: build the word and print i when it is empty."),
    ("fizzseven", "FizzSeven", "For every i from 1 to n print Fizz if i is divisible by 3, Seven if by 7, FizzSeven if by both, otherwise i itself.", "Print n lines.",
     "n = int(input())\nfor i in range(1, n + 1):\n    s = ''\n    if i % 3 == 0:\n        s += 'Fizz'\n    if i % 7 == 0:\n        s += 'Seven'\n    print(s or i)",
     "FizzBuzz with divisors 3 and 7: build the word and print i when it is empty."),
])

GCD_IN = "A single line contains two integers a and b (1 ≤ a, b ≤ 10^6)."
family("gcd", "easy", GCD_IN, lambda r: (lambda k: f"{r.randint(1, 40) * k} {r.randint(1, 40) * k}\n")(r.choice([1, 1, 2, 3, 6, 7, 12])), [
    ("gcd", "Greatest Common Divisor", "Print the greatest common divisor of a and b.", "Print one integer.",
     "import math\na, b = map(int, input().split())\nprint(math.gcd(a, b))", "math.gcd computes the greatest common divisor directly."),
    ("lcm", "Least Common Multiple", "Print the least common multiple of a and b.", "Print one integer.",
     "import math\na, b = map(int, input().split())\nprint(a * b // math.gcd(a, b))", "The least common multiple is a * b divided by their gcd."),
    ("coprime", "Coprime Pair", "Print YES if a and b have no common divisor greater than 1, otherwise NO.", "Print YES or NO.",
     "import math\na, b = map(int, input().split())\nprint('YES' if math.gcd(a, b) == 1 else 'NO')", "Two numbers are coprime exactly when their gcd is 1."),
    ("gcd-list", "GCD of a List", "Print the greatest common divisor of all n numbers.", "Print one integer.",
     "import math\nn = int(input())\na = list(map(int, input().split()))\ng = 0\nfor x in a:\n    g = math.gcd(g, x)\nprint(g)",
     "Fold math.gcd over the list starting from 0, since gcd(0, x) = x.", "medium", ints_line(1, 60, 1, 6), POS_IN),
    ("lcm-list", "LCM of a List", "Print the least common multiple of all n numbers.", "Print one integer.",
     "import math\nn = int(input())\na = list(map(int, input().split()))\ng = 1\nfor x in a:\n    g = g * x // math.gcd(g, x)\nprint(g)",
     "Fold the pairwise lcm over the list starting from 1.", "medium", ints_line(1, 30, 1, 6), POS_IN),
])

PRIME_FN = "def is_prime(x):\n    if x < 2:\n        return False\n    i = 2\n    while i * i <= x:\n        if x % i == 0:\n            return False\n        i += 1\n    return True\n\n"
family("primes", "medium", "A single line contains an integer n (1 ≤ n ≤ 10^4).", one_int(1, 200), [
    ("is-prime", "Prime or Not", "Print YES if n is prime, otherwise NO.", "Print YES or NO.",
     PRIME_FN + "n = int(input())\nprint('YES' if is_prime(n) else 'NO')", "Trial division up to the square root decides primality; 1 is not prime.", "easy",
     lambda r: f"{r.choice([1, 2, 3, 4, 9, 13, 49, 97, 100, 101, 7919, r.randint(1, 200)])}\n"),
    ("count-primes", "Counting Primes", "Print how many primes are at most n.", "Print one integer.",
     PRIME_FN + "n = int(input())\nprint(sum(1 for x in range(n + 1) if is_prime(x)))", "Test every number from 0 to n with trial division and count the primes."),
    ("sum-primes", "Sum of Primes", "Print the sum of all primes that are at most n.", "Print one integer.",
     PRIME_FN + "n = int(input())\nprint(sum(x for x in range(n + 1) if is_prime(x)))", "Test every number up to n with trial division and add the primes."),
    ("prev-prime", "Largest Prime Not Above n", "Print the largest prime at most n, or -1 if there is none.", "Print one integer.",
     PRIME_FN + "n = int(input())\nx = n\nwhile x >= 2 and not is_prime(x):\n    x -= 1\nprint(x if x >= 2 else -1)", "Walk down from n until a prime is found; below 2 there is none."),
    ("next-prime", "Smallest Prime Not Below n", "Print the smallest prime that is at least n.", "Print one integer.",
     PRIME_FN + "n = int(input())\nx = n\nwhile not is_prime(x):\n    x += 1\nprint(x)", "Walk up from n until trial division finds a prime."),
])

family("fibonacci", "medium", "A single line contains an integer n (0 ≤ n ≤ 90).", one_int(0, 40), [
    ("fib", "Fibonacci Number", "F(0) = 0, F(1) = 1 and F(k) = F(k-1) + F(k-2). Print F(n).", "Print one integer.",
     "n = int(input())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)", "Iterate the pair (a, b) n times; a then holds F(n).", "easy"),
    ("lucas", "Lucas Number", "L(0) = 2, L(1) = 1 and L(k) = L(k-1) + L(k-2). Print L(n).", "Print one integer.",
     "n = int(input())\na, b = 2, 1\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)", "Same recurrence as Fibonacci with starting pair (2, 1)."),
    ("fib-mod-1000", "Fibonacci Modulo 1000", "F(0) = 0, F(1) = 1 and F(k) = F(k-1) + F(k-2). Print F(n) modulo 1000 (n ≤ 10^5).", "Print one integer.",
     "n = int(input())\na, b = 0, 1\nfor _ in range(n):\n    a, b = b, (a + b) % 1000\nprint(a)", "Iterate the Fibonacci pair reducing modulo 1000 so numbers stay small.", None, one_int(0, 5000)),
    ("tribonacci", "Tribonacci Number", "T(0) = 0, T(1) = 0, T(2) = 1 and T(k) = T(k-1) + T(k-2) + T(k-3). Print T(n).", "Print one integer.",
     "n = int(input())\na, b, c = 0, 0, 1\nfor _ in range(n):\n    a, b, c = b, c, a + b + c\nprint(a)", "Keep the last three values and shift them n times; a then holds T(n)."),
    ("fib-custom", "Fibonacci from 3 and 4", "G(0) = 3, G(1) = 4 and G(k) = G(k-1) + G(k-2). Print G(n).", "Print one integer.",
     "n = int(input())\na, b = 3, 4\nfor _ in range(n):\n    a, b = b, a + b\nprint(a)", "Same recurrence as Fibonacci with starting pair (3, 4)."),
])

family("digits", "easy", "A single line contains an integer x (1 ≤ x ≤ 10^18).", lambda r: str(r.randint(1, 10 ** r.randint(1, 12))) + "\n", [
    ("digit-sum", "Sum of Digits", "Print the sum of the decimal digits of x.", "Print one integer.",
     READ_S + "print(sum(int(c) for c in s))", "Read the number as a string and add its digits."),
    ("digit-product", "Product of Digits", "Print the product of the decimal digits of x.", "Print one integer.",
     READ_S + "p = 1\nfor c in s:\n    p *= int(c)\nprint(p)", "Read the number as a string and multiply its digits."),
    ("digit-count", "Number Length", "Print how many decimal digits x has.", "Print one integer.",
     READ_S + "print(len(s))", "The number of digits is the length of its decimal string."),
    ("digital-root", "Digital Root", "Replace x by the sum of its digits until it has one digit, and print that digit.", "Print one integer.",
     READ_S + "while len(s) > 1:\n    s = str(sum(int(c) for c in s))\nprint(s)", "Keep replacing the string by its digit sum until one digit remains.", "medium"),
    ("digit-reverse", "Reverse the Digits", "Print the number formed by the digits of x in reverse order, without leading zeros.", "Print one integer.",
     READ_S + "print(int(s[::-1]))", "Reverse the digit string and convert it to int, which drops leading zeros."),
])

family("sort", "easy", LIST_IN, ints_line(-30, 30), [
    ("sort-asc", "Sort Ascending", "Print the numbers in non-decreasing order.", "Print n integers on one line.",
     READ + "print(*sorted(a))", "sorted(a) orders the list; print it space-separated with *."),
    ("sort-desc", "Sort Descending", "Print the numbers in non-increasing order.", "Print n integers on one line.",
     READ + "print(*sorted(a, reverse=True))", "Sort with reverse=True and print space-separated."),
    ("sort-unique", "Distinct Values", "Print the distinct values in increasing order.", "Print the values on one line.",
     READ + "print(*sorted(set(a)))", "A set removes duplicates; sort it and print."),
    ("sort-abs", "Sort by Absolute Value", "Print the numbers ordered by absolute value; on ties the smaller number comes first.", "Print n integers on one line.",
     READ + "print(*sorted(a, key=lambda x: (abs(x), x)))", "Sort with the key (abs(x), x) so ties put the negative number first.", "medium"),
    ("sort-lines", "Sort Ascending, One per Line", "Print the numbers in non-decreasing order, one per line.", "Print n lines.",
     READ_COL + "for x in sorted(a):\n    print(x)", "Read the numbers, sort them and print each on its own line.", None, ints_col(), COL_IN),
])

Q_IN = "The first line contains n (1 ≤ n ≤ 1000), the second n integers a_1..a_n (|a_i| ≤ 1000), the third q (1 ≤ q ≤ 1000), then q lines with l and r (1 ≤ l ≤ r ≤ n)."
READ_Q = "n = int(input())\na = list(map(int, input().split()))\nq = int(input())\n"
family("range-query", "medium", Q_IN, queries(), [
    ("range-sum", "Range Sums", "For each query print a_l + ... + a_r.", "Print q lines.",
     READ_Q + "p = [0]\nfor x in a:\n    p.append(p[-1] + x)\nfor _ in range(q):\n    l, r = map(int, input().split())\n    print(p[r] - p[l - 1])",
     "Build prefix sums p so that each query is p[r] - p[l - 1]."),
    ("range-max", "Range Maximum", "For each query print the largest of a_l, ..., a_r.", "Print q lines.",
     READ_Q + "for _ in range(q):\n    l, r = map(int, input().split())\n    print(max(a[l - 1:r]))", "With small limits, slice a[l - 1:r] and take its maximum for each query."),
    ("range-count-even", "Even Numbers in a Range", "For each query print how many of a_l, ..., a_r are even.", "Print q lines.",
     READ_Q + "p = [0]\nfor x in a:\n    p.append(p[-1] + (x % 2 == 0))\nfor _ in range(q):\n    l, r = map(int, input().split())\n    print(p[r] - p[l - 1])",
     "Prefix-count the even numbers; each query is p[r] - p[l - 1]."),
    ("range-xor", "Range XOR", "For each query print a_l xor ... xor a_r (the numbers are non-negative).", "Print q lines.",
     READ_Q + "p = [0]\nfor x in a:\n    p.append(p[-1] ^ x)\nfor _ in range(q):\n    l, r = map(int, input().split())\n    print(p[r] ^ p[l - 1])",
     "Prefix xors work like prefix sums because x ^ x = 0: answer p[r] ^ p[l - 1].", None, queries(0, 63)),
    ("range-sum-mod", "Range Sums Modulo 10", "For each query print (a_l + ... + a_r) modulo 10.", "Print q lines.",
     READ_Q + "p = [0]\nfor x in a:\n    p.append(p[-1] + x)\nfor _ in range(q):\n    l, r = map(int, input().split())\n    print((p[r] - p[l - 1]) % 10)",
     "Prefix sums give each range sum as p[r] - p[l - 1]; take it modulo 10."),
])

PAIR_IN = "The first line contains n and k (1 ≤ n ≤ 100, |k| ≤ 1000). The second line contains n integers a_1..a_n (|a_i| ≤ 1000)."
READ_K = "n, k = map(int, input().split())\na = list(map(int, input().split()))\n"
family("pairs", "medium", LIST_IN, ints_line(0, 6), [
    ("pairs-sum-k", "Pairs with Sum k", "Print the number of pairs i < j with a_i + a_j = k.", "Print one integer.",
     READ_K + "print(sum(1 for i in range(n) for j in range(i + 1, n) if a[i] + a[j] == k))", "Check every pair i < j and count those whose sum is k.", None, list_and_k(0, 6, 0, 12), PAIR_IN),
    ("pairs-equal", "Equal Pairs", "Print the number of pairs i < j with a_i = a_j.", "Print one integer.",
     READ + "print(sum(1 for i in range(n) for j in range(i + 1, n) if a[i] == a[j]))", "Check every pair i < j and count equal values."),
    ("pairs-div-3", "Pairs Divisible by 3", "Print the number of pairs i < j whose sum a_i + a_j is divisible by 3.", "Print one integer.",
     READ + "print(sum(1 for i in range(n) for j in range(i + 1, n) if (a[i] + a[j]) % 3 == 0))", "Check every pair i < j and count sums with remainder 0 modulo 3."),
    ("inversions", "Inversions", "Print the number of pairs i < j with a_i > a_j.", "Print one integer.",
     READ + "print(sum(1 for i in range(n) for j in range(i + 1, n) if a[i] > a[j]))", "An inversion is a pair i < j with a[i] > a[j]; count them all."),
    ("pairs-diff-k", "Pairs with Difference k", "Print the number of pairs i < j with |a_i - a_j| = k.", "Print one integer.",
     READ_K + "print(sum(1 for i in range(n) for j in range(i + 1, n) if abs(a[i] - a[j]) == k))", "Check every pair i < j and count those whose absolute difference is k.", None, list_and_k(0, 6, 0, 4), PAIR_IN),
])

GRID_IN = "The first line contains h and w (1 ≤ h, w ≤ 50). Each of the next h lines contains w characters, each '.' or '#'."
READ_G = "h, w = map(int, input().split())\ng = [input() for _ in range(h)]\n"
family("grid", "medium", GRID_IN, grid(), [
    ("grid-count", "Count the Walls", "Print the number of '#' cells.", "Print one integer.",
     READ_G + "print(sum(row.count('#') for row in g))", "Count '#' in every row and add the counts.", "easy"),
    ("grid-full-rows", "Full Rows", "Print the number of rows made only of '#'.", "Print one integer.",
     READ_G + "print(sum(1 for row in g if row == '#' * w))", "A row is full when it equals '#' * w; count such rows.", None, grid("###.")),
    ("grid-columns", "Columns with a Wall", "Print the number of columns that contain at least one '#'.", "Print one integer.",
     READ_G + "print(sum(1 for j in range(w) if any(row[j] == '#' for row in g)))", "For each column j, check whether any row has '#' at j."),
    ("grid-transpose", "Transpose the Grid", "Print the transposed grid: w lines of h characters, line j made of column j.", "Print w lines.",
     READ_G + "for j in range(w):\n    print(''.join(row[j] for row in g))", "Line j of the answer is column j read from top to bottom."),
    ("grid-rotate", "Rotate the Grid", "Print the grid rotated 90 degrees clockwise: w lines of h characters.", "Print w lines.",
     READ_G + "for j in range(w):\n    print(''.join(row[j] for row in reversed(g)))", "Rotating clockwise makes line j equal to column j read from bottom to top."),
])

family("stairs", "medium", "A single line contains an integer n (1 ≤ n ≤ 60).", one_int(1, 40), [
    ("stairs-12", "Climbing Stairs", "You climb n stairs taking 1 or 2 steps at a time. Print the number of different ways.", "Print one integer.",
     "n = int(input())\nf = [1] + [0] * n\nfor i in range(1, n + 1):\n    f[i] = f[i - 1] + (f[i - 2] if i >= 2 else 0)\nprint(f[n])", "f[i] counts ways to reach stair i: the last move was 1 or 2 steps, so f[i] = f[i - 1] + f[i - 2]."),
    ("stairs-123", "Climbing Stairs, Up to 3", "You climb n stairs taking 1, 2 or 3 steps at a time. Print the number of different ways.", "Print one integer.",
     "n = int(input())\nf = [1] + [0] * n\nfor i in range(1, n + 1):\n    f[i] = sum(f[i - s] for s in (1, 2, 3) if i >= s)\nprint(f[n])", "f[i] adds the ways to reach i - 1, i - 2 and i - 3, since the last move has one of those sizes."),
    ("stairs-13", "Climbing Stairs by 1 or 3", "You climb n stairs taking 1 or 3 steps at a time. Print the number of different ways.", "Print one integer.",
     "n = int(input())\nf = [1] + [0] * n\nfor i in range(1, n + 1):\n    f[i] = sum(f[i - s] for s in (1, 3) if i >= s)\nprint(f[n])", "f[i] adds the ways to reach i - 1 and i - 3."),
    ("stairs-mod", "Many Stairs", "You climb n stairs (n ≤ 10^5) taking 1 or 2 steps at a time. Print the number of ways modulo 1000000007.", "Print one integer.",
     "n = int(input())\nf = [1] + [0] * n\nfor i in range(1, n + 1):\n    f[i] = (f[i - 1] + (f[i - 2] if i >= 2 else 0)) % 1000000007\nprint(f[n])", "Same recurrence f[i] = f[i - 1] + f[i - 2], reduced modulo 1000000007.", None, one_int(1, 3000)),
    ("stairs-no-2", "Climbing Stairs by 2 or 5", "You climb n stairs taking 2 or 5 steps at a time. Print the number of different ways.", "Print one integer.",
     "n = int(input())\nf = [1] + [0] * n\nfor i in range(1, n + 1):\n    f[i] = sum(f[i - s] for s in (2, 5) if i >= s)\nprint(f[n])", "f[i] adds the ways to reach i - 2 and i - 5; some n cannot be reached at all."),
])

family("runs", "medium", LIST_IN, ints_line(0, 5, 1, 12), [
    ("run-increasing", "Longest Increasing Run", "Print the length of the longest block of consecutive elements that is strictly increasing.", "Print one integer.",
     READ + "best = cur = 1\nfor i in range(1, n):\n    cur = cur + 1 if a[i] > a[i - 1] else 1\n    best = max(best, cur)\nprint(best)", "Extend the current run while a[i] > a[i - 1], reset it to 1 otherwise, and keep the best."),
    ("run-nondecreasing", "Longest Non-decreasing Run", "Print the length of the longest block of consecutive elements that is non-decreasing.", "Print one integer.",
     READ + "best = cur = 1\nfor i in range(1, n):\n    cur = cur + 1 if a[i] >= a[i - 1] else 1\n    best = max(best, cur)\nprint(best)", "Extend the run while a[i] >= a[i - 1], reset otherwise, and keep the best."),
    ("run-equal", "Longest Plateau", "Print the length of the longest block of consecutive equal elements.", "Print one integer.",
     READ + "best = cur = 1\nfor i in range(1, n):\n    cur = cur + 1 if a[i] == a[i - 1] else 1\n    best = max(best, cur)\nprint(best)", "Extend the run while a[i] == a[i - 1], reset otherwise, and keep the best.", None, ints_line(0, 2, 1, 12)),
    ("run-decreasing", "Longest Decreasing Run", "Print the length of the longest block of consecutive elements that is strictly decreasing.", "Print one integer.",
     READ + "best = cur = 1\nfor i in range(1, n):\n    cur = cur + 1 if a[i] < a[i - 1] else 1\n    best = max(best, cur)\nprint(best)", "Extend the run while a[i] < a[i - 1], reset otherwise, and keep the best."),
])

family("base", "easy", "A single line contains an integer x (0 ≤ x ≤ 10^9).", one_int(0, 5000), [
    ("to-binary", "Binary", "Print x in base 2 without leading zeros.", "Print one line.",
     "x = int(input())\nprint(bin(x)[2:])", "bin(x) gives '0b...'; drop the prefix."),
    ("to-octal", "Octal", "Print x in base 8 without leading zeros.", "Print one line.",
     "x = int(input())\nprint(oct(x)[2:])", "oct(x) gives '0o...'; drop the prefix."),
    ("to-hex", "Hexadecimal", "Print x in base 16 with upper-case digits and no leading zeros.", "Print one line.",
     "x = int(input())\nprint(hex(x)[2:].upper())", "hex(x) gives '0x...' in lower case; drop the prefix and upper-case it."),
    ("popcount", "Count the Ones", "Print how many 1 digits x has in base 2.", "Print one integer.",
     "x = int(input())\nprint(bin(x).count('1'))", "Write x in binary with bin(x) and count the '1' characters."),
    ("to-base-3", "Ternary", "Print x in base 3 without leading zeros.", "Print one line.",
     "x = int(input())\ns = ''\nwhile x > 0:\n    s = str(x % 3) + s\n    x //= 3\nprint(s or '0')", "Take remainders modulo 3 from the lowest digit up; zero prints as 0.", "medium"),
])

family("brackets", "medium", "A single line contains a string s of the characters ( and ) (1 ≤ |s| ≤ 10^5).", brackets(), [
    ("balanced", "Balanced Brackets", "Print YES if s is a balanced bracket sequence, otherwise NO.", "Print YES or NO.",
     READ_S + "d = 0\nok = True\nfor c in s:\n    d += 1 if c == '(' else -1\n    if d < 0:\n        ok = False\nprint('YES' if ok and d == 0 else 'NO')", "Track the depth d; the sequence is balanced if d never goes negative and ends at 0."),
    ("max-depth", "Nesting Depth", "s is balanced. Print the largest nesting depth.", "Print one integer.",
     READ_S + "d = best = 0\nfor c in s:\n    d += 1 if c == '(' else -1\n    best = max(best, d)\nprint(best)", "Track the depth d while scanning and keep its maximum.", "easy",
     lambda r: (lambda s: s)(brackets()(r)) if False else "".join("(" * k + ")" * k for k in (r.randint(0, 3), r.randint(1, 3))) + "\n"),
    ("min-insert", "Fix the Brackets", "Print the minimum number of brackets to insert to make s balanced.", "Print one integer.",
     READ_S + "d = add = 0\nfor c in s:\n    d += 1 if c == '(' else -1\n    if d < 0:\n        add += 1\n        d = 0\nprint(add + d)", "Every time the depth would go negative we must insert '('; at the end d unmatched '(' need ')'."),
    ("balanced-3", "Three Kinds of Brackets", "s consists of ()[]{}. Print YES if it is balanced, otherwise NO.", "Print YES or NO.",
     READ_S + "st = []\nok = True\nfor c in s:\n    if c in '([{':\n        st.append(c)\n    elif not st or st.pop() + c not in ('()', '[]', '{}'):\n        ok = False\nprint('YES' if ok and not st else 'NO')", "Push opening brackets on a stack; each closing bracket must match the popped one, and the stack must end empty.", "hard", brackets("()[]{}"),
     "A single line contains a string s of the characters ()[]{} (1 ≤ |s| ≤ 10^5)."),
])

family("subarray", "hard", LIST_IN, ints_line(-20, 20), [
    ("max-subarray", "Maximum Subarray", "Print the largest sum of a non-empty block of consecutive elements.", "Print one integer.",
     READ + "best = cur = a[0]\nfor x in a[1:]:\n    cur = max(x, cur + x)\n    best = max(best, cur)\nprint(best)", "Kadane: the best block ending here either extends the previous one or starts fresh; keep the overall best."),
    ("min-subarray", "Minimum Subarray", "Print the smallest sum of a non-empty block of consecutive elements.", "Print one integer.",
     READ + "best = cur = a[0]\nfor x in a[1:]:\n    cur = min(x, cur + x)\n    best = min(best, cur)\nprint(best)", "Kadane with min: the smallest block ending here extends the previous one or starts fresh."),
    ("max-window", "Best Window", "The first line holds n and k (1 ≤ k ≤ n). Print the largest sum of k consecutive elements.", "Print one integer.",
     READ_K + "s = sum(a[:k])\nbest = s\nfor i in range(k, n):\n    s += a[i] - a[i - k]\n    best = max(best, s)\nprint(best)", "Slide a window of size k, adding the new element and removing the old one, and keep the best sum.", "medium", window_k(),
     "The first line contains n and k (1 ≤ k ≤ n ≤ 1000). The second line contains n integers (|a_i| ≤ 1000)."),
    ("max-subarray-empty", "Maximum Subarray, Empty Allowed", "Print the largest sum of a block of consecutive elements; the empty block has sum 0.", "Print one integer.",
     READ + "best = cur = 0\nfor x in a:\n    cur = max(0, cur + x)\n    best = max(best, cur)\nprint(best)", "Kadane where the running sum restarts at 0 instead of at x, since the empty block is allowed."),
])

WORD_IN = "A single line contains words of lower-case letters separated by single spaces (at most 100 words)."
READ_W = "w = input().split()\n"
family("words", "easy", WORD_IN, word_line(), [
    ("word-count", "Count Words", "Print the number of words.", "Print one integer.",
     READ_W + "print(len(w))", "Split the line on spaces and print the number of parts."),
    ("word-longest", "Longest Word", "Print the longest word; if several have that length print the first.", "Print one word.",
     READ_W + "print(max(w, key=len))", "max with key=len returns the first longest word."),
    ("word-distinct", "Distinct Words", "Print the number of different words.", "Print one integer.",
     READ_W + "print(len(set(w)))", "Put the words in a set and print its size."),
    ("word-reverse", "Reverse the Words", "Print the words in reverse order.", "Print one line.",
     READ_W + "print(' '.join(reversed(w)))", "Reverse the list of words and join it with spaces."),
    ("word-frequent", "Most Frequent Word", "Print the word that occurs most often; on ties print the alphabetically smallest.", "Print one word.",
     READ_W + "c = {}\nfor x in w:\n    c[x] = c.get(x, 0) + 1\nprint(min(c, key=lambda x: (-c[x], x)))", "Count each word in a dict, then pick the word with the highest count and, on ties, the smallest.", "medium"),
])

SQ_IN = "The first line contains n (1 ≤ n ≤ 100). Each of the next n lines contains n integers (|a_ij| ≤ 1000)."
READ_M = "n = int(input())\nm = [list(map(int, input().split())) for _ in range(n)]\n"
family("matrix", "medium", SQ_IN, square(), [
    ("diag-sum", "Main Diagonal", "Print the sum of the main diagonal a_11 + a_22 + ... + a_nn.", "Print one integer.",
     READ_M + "print(sum(m[i][i] for i in range(n)))", "The main diagonal holds m[i][i]; add those.", "easy"),
    ("anti-diag-sum", "Anti-diagonal", "Print the sum of the anti-diagonal a_1n + a_2,n-1 + ... + a_n1.", "Print one integer.",
     READ_M + "print(sum(m[i][n - 1 - i] for i in range(n)))", "The anti-diagonal holds m[i][n - 1 - i]; add those."),
    ("diag-diff", "Diagonal Difference", "Print the absolute difference between the sums of the two diagonals.", "Print one integer.",
     READ_M + "print(abs(sum(m[i][i] - m[i][n - 1 - i] for i in range(n))))", "Sum m[i][i] - m[i][n - 1 - i] over i and take the absolute value."),
    ("row-sums", "Row Sums", "Print the sum of each row, one per line.", "Print n lines.",
     READ_M + "for row in m:\n    print(sum(row))", "Print sum(row) for each row.", "easy"),
    ("col-sums", "Column Sums", "Print the sums of the columns on one line.", "Print n integers.",
     READ_M + "print(*(sum(m[i][j] for i in range(n)) for j in range(n)))", "For each column j add m[i][j] over all rows i."),
])

family("coins", "hard", "A single line contains an integer n (1 ≤ n ≤ 1000).", one_int(1, 60), [
    ("coin-ways-125", "Coin Combinations", "Coins of value 1, 2 and 5 are available in any number. Print the number of ways to pay exactly n (order does not matter).", "Print one integer.",
     "n = int(input())\nf = [1] + [0] * n\nfor c in (1, 2, 5):\n    for i in range(c, n + 1):\n        f[i] += f[i - c]\nprint(f[n])", "Unbounded knapsack counting: process coins in the outer loop so each combination is counted once."),
    ("coin-ways-134", "Coin Combinations 1, 3, 4", "Coins of value 1, 3 and 4 are available in any number. Print the number of ways to pay exactly n (order does not matter).", "Print one integer.",
     "n = int(input())\nf = [1] + [0] * n\nfor c in (1, 3, 4):\n    for i in range(c, n + 1):\n        f[i] += f[i - c]\nprint(f[n])", "Count combinations with coins in the outer loop: f[i] += f[i - c]."),
    ("coin-min-134", "Fewest Coins", "Coins of value 1, 3 and 4 are available in any number. Print the fewest coins that pay exactly n.", "Print one integer.",
     "n = int(input())\nf = [0] + [n] * n\nfor i in range(1, n + 1):\n    f[i] = min(f[i - c] + 1 for c in (1, 3, 4) if i >= c)\nprint(f[n])", "f[i] is one more than the best f[i - c] over the coins; greedy fails for 1, 3, 4, so use DP."),
    ("coin-ways-mod", "Many Coin Combinations", "Coins of value 1, 2, 5 and 10 are available in any number. Print the number of ways to pay exactly n modulo 1000000007.", "Print one integer.",
     "n = int(input())\nf = [1] + [0] * n\nfor c in (1, 2, 5, 10):\n    for i in range(c, n + 1):\n        f[i] = (f[i] + f[i - c]) % 1000000007\nprint(f[n])", "Same combination count with coins in the outer loop, reduced modulo 1000000007.", None, one_int(1, 1000)),
    ("coin-min-2-5", "Fewest Coins 2 and 5", "Coins of value 2 and 5 are available in any number. Print the fewest coins that pay exactly n, or -1 if impossible.", "Print one integer.",
     "n = int(input())\nf = [0] + [n + 1] * n\nfor i in range(1, n + 1):\n    f[i] = min([f[i - c] + 1 for c in (2, 5) if i >= c] + [n + 1])\nprint(f[n] if f[n] <= n else -1)", "DP over amounts with an 'impossible' value n + 1; print -1 if n stays impossible."),
])

family("sequences", "hard", LIST_IN, ints_line(0, 9, 1, 10), [
    ("lis", "Longest Increasing Subsequence", "Print the length of the longest strictly increasing subsequence.", "Print one integer.",
     READ + "f = [1] * n\nfor i in range(n):\n    for j in range(i):\n        if a[j] < a[i]:\n            f[i] = max(f[i], f[j] + 1)\nprint(max(f))", "f[i] is the longest increasing subsequence ending at i: extend any earlier f[j] with a[j] < a[i]."),
    ("lnds", "Longest Non-decreasing Subsequence", "Print the length of the longest non-decreasing subsequence.", "Print one integer.",
     READ + "f = [1] * n\nfor i in range(n):\n    for j in range(i):\n        if a[j] <= a[i]:\n            f[i] = max(f[i], f[j] + 1)\nprint(max(f))", "Same DP as the increasing case with a[j] <= a[i]."),
    ("lds", "Longest Decreasing Subsequence", "Print the length of the longest strictly decreasing subsequence.", "Print one integer.",
     READ + "f = [1] * n\nfor i in range(n):\n    for j in range(i):\n        if a[j] > a[i]:\n            f[i] = max(f[i], f[j] + 1)\nprint(max(f))", "Same DP with a[j] > a[i]."),
    ("lcs", "Longest Common Subsequence", "Print the length of the longest common subsequence of s and t.", "Print one integer.",
     "s = input()\nt = input()\nf = [[0] * (len(t) + 1) for _ in range(len(s) + 1)]\nfor i in range(len(s)):\n    for j in range(len(t)):\n        f[i + 1][j + 1] = f[i][j] + 1 if s[i] == t[j] else max(f[i][j + 1], f[i + 1][j])\nprint(f[len(s)][len(t)])",
     "f[i][j] is the LCS of the prefixes: extend the diagonal on a match, else take the better of dropping one character.", None, two_words(),
     "Two lines contain strings s and t of lower-case letters (1 ≤ |s|, |t| ≤ 1000)."),
    ("edit", "Edit Distance", "Print the fewest single-character insertions, deletions and replacements that turn s into t.", "Print one integer.",
     "s = input()\nt = input()\nf = [[i + j if i * j == 0 else 0 for j in range(len(t) + 1)] for i in range(len(s) + 1)]\nfor i in range(len(s)):\n    for j in range(len(t)):\n        f[i + 1][j + 1] = min(f[i][j] + (s[i] != t[j]), f[i][j + 1] + 1, f[i + 1][j] + 1)\nprint(f[len(s)][len(t)])",
     "f[i][j] is the distance between prefixes: replace (or match), delete or insert, starting from f[i][0] = i and f[0][j] = j.", None, two_words(),
     "Two lines contain strings s and t of lower-case letters (1 ≤ |s|, |t| ≤ 1000)."),
])

family("clock", "medium", "A single line contains a time HH:MM in 24-hour format.", clock(), [
    ("clock-minutes", "Minutes Since Midnight", "Print how many minutes have passed since 00:00.", "Print one integer.",
     "h, m = map(int, input().split(':'))\nprint(h * 60 + m)", "Split on ':' and convert: h * 60 + m minutes.", "easy"),
    ("clock-add-45", "Forty-five Minutes Later", "Print the time 45 minutes later, in the same format.", "Print HH:MM.",
     "h, m = map(int, input().split(':'))\nt = (h * 60 + m + 45) % 1440\nprint(f'{t // 60:02d}:{t % 60:02d}')", "Convert to minutes, add 45, wrap around a day of 1440 minutes, and format with two digits."),
    ("clock-12h", "Twelve-hour Clock", "Print the time in 12-hour format h:MM AM/PM (12:MM for noon and midnight hours).", "Print one line.",
     "h, m = map(int, input().split(':'))\nprint(f'{(h + 11) % 12 + 1}:{m:02d} ' + ('AM' if h < 12 else 'PM'))", "The 12-hour hour is (h + 11) % 12 + 1, and hours below 12 are AM."),
    ("clock-add-n", "Some Minutes Later", "The second line contains k (0 ≤ k ≤ 10^6). Print the time k minutes later.", "Print HH:MM.",
     "h, m = map(int, input().split(':'))\nk = int(input())\nt = (h * 60 + m + k) % 1440\nprint(f'{t // 60:02d}:{t % 60:02d}')", "Convert to minutes, add k, wrap modulo 1440 and format with two digits.", None,
     lambda r: clock()(r) + f"{r.randint(0, 5000)}\n", "The first line contains a time HH:MM in 24-hour format."),
    ("clock-until-midnight", "Until Midnight", "Print how many minutes remain until the next 00:00 (1440 at exactly 00:00).", "Print one integer.",
     "h, m = map(int, input().split(':'))\nprint(1440 - (h * 60 + m))", "A day has 1440 minutes; subtract the minutes already passed.", "easy"),
])

# ------------------------------------------------------------ build

def run(code, inp):
    out = io.StringIO()
    old = sys.stdin
    sys.stdin = io.StringIO(inp)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<solution>", "exec"), {"__name__": "__main__"})
    finally:
        sys.stdin = old
    return out.getvalue()


def statement(title, task, inp, outp, ex_in, ex_out):
    return (f"{title}\n\n{task}\n\nInput\n{inp}\n\nOutput\n{outp}\n\n"
            f"Example\nInput:\n{ex_in.rstrip()}\nOutput:\n{ex_out.rstrip()}\n")


def build():
    problems = []
    for fname, fdiff, finp, fgen, members in FAMILIES:
        for i, m in enumerate(members):
            key, title, task, outp, code, trace = m[:6]
            diff = (m[6] if len(m) > 6 else None) or fdiff
            gen = (m[7] if len(m) > 7 else None) or fgen
            inp_text = (m[8] if len(m) > 8 else None) or finp
            pid = f"demo/{fname}/{key}"
            r = random.Random(int(hashlib.sha256(pid.encode()).hexdigest()[:16], 16))
            seen, tests = set(), []
            tries = 0
            while len(tests) < TESTS_PER_PROBLEM and tries < 200:
                tries += 1
                x = gen(r)
                if x in seen:
                    continue
                seen.add(x)
                tests.append({"input": x, "output": run(code, x), "type": "stdin"})
            assert len(tests) >= 5, pid
            # a constant answer must not pass every test
            assert len({t["output"] for t in tests}) >= 2, pid
            problems.append({
                "id": pid,
                "source": "demo",
                "title": title,
                "statement": statement(title, task, inp_text, outp, tests[0]["input"], tests[0]["output"]),
                "starter_code": "",
                "tests": tests,
                "difficulty": diff,
                "difficulty_raw": diff,
                "time_limit_s": 2,
                "memory_limit_mb": 256,
                "family": fname,
                "split": "eval" if i % 3 == 1 else "train",
                "reference_solution": code + "\n",
                "reference_trace": trace,
            })
    return problems


if __name__ == "__main__":
    ps = build()
    # --out FILE writes elsewhere (the test compares it with the shipped file)
    out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else os.path.join(HERE, "problems.jsonl")
    with open(out, "w", encoding="utf-8") as f:
        for p in ps:
            f.write(json.dumps(p, ensure_ascii=False, sort_keys=True) + "\n")
    by = {}
    for p in ps:
        by[(p["split"], p["difficulty"])] = by.get((p["split"], p["difficulty"]), 0) + 1
    print(f"{len(ps)} problems in {len(FAMILIES)} families:", dict(sorted(by.items())), file=sys.stderr)
