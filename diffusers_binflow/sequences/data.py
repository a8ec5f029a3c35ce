"""Sequence tasks whose correctness is exact, so that the fraction of valid generated sequences is a metric.

- `ArithmeticStatements`: ``"17+25=42"``: ``a+b=c`` with ``a, b`` in ``[0, max_operand]`` written without leading
  zeros; valid when the digits parse that way and ``c == a + b``. All ``(max_operand + 1)**2`` statements are
  enumerable; a fixed, seeded share of the operand pairs is held out of training, so a valid sample can be checked
  for being new.
- `BalancedBrackets`: non-empty strings over ``()[]`` of at most `max_length` characters in which every bracket
  is closed by its own kind in the right order.
- `SudokuGrids`: solved 4x4 Sudoku grids as 16 digits; all 288 are enumerable, a seeded share is held out.
"""

import random
import re


def split_texts(texts: list[str], split: str, heldout_fraction: float, seed: int) -> list[str]:
    """The `split` (`"train"`, `"heldout"` or `"all"`) of an enumerable task's `texts`: a seeded share
    `heldout_fraction` is held out; both splits keep the texts' order."""
    if split == "all":
        return texts
    if split not in ("train", "heldout"):
        raise ValueError(f"Unknown split {split!r}; choose 'train', 'heldout' or 'all'.")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    num_heldout = round(heldout_fraction * len(texts))
    chosen = sorted(order[:num_heldout]) if split == "heldout" else sorted(order[num_heldout:])
    return [texts[i] for i in chosen]


class ArithmeticStatements:
    """Addition statements ``a+b=c`` (see the module docstring)."""

    name = "arithmetic"
    _pattern = re.compile(r"(0|[1-9][0-9]*)\+(0|[1-9][0-9]*)=(0|[1-9][0-9]*)")

    def __init__(self, max_operand: int = 99, heldout_fraction: float = 0.1, seed: int = 0):
        if max_operand < 1:
            raise ValueError(f"`max_operand` must be at least 1, got {max_operand}.")
        if not 0 <= heldout_fraction < 1:
            raise ValueError(f"`heldout_fraction` must be in [0, 1), got {heldout_fraction}.")
        self.max_operand, self.heldout_fraction, self.seed = max_operand, heldout_fraction, seed

    @property
    def max_chars(self) -> int:
        digits = len(str(self.max_operand))
        return 2 * digits + 2 + len(str(2 * self.max_operand))

    def texts(self, split: str = "train") -> list[str]:
        """The statements of `split` (`"train"`, `"heldout"` or `"all"`), in a fixed order."""
        statements = [f"{a}+{b}={a + b}" for a in range(self.max_operand + 1) for b in range(self.max_operand + 1)]
        return split_texts(statements, split, self.heldout_fraction, self.seed)

    def is_valid(self, text: str) -> bool:
        match = self._pattern.fullmatch(text)
        if match is None:
            return False
        a, b, c = (int(group) for group in match.groups())
        return a <= self.max_operand and b <= self.max_operand and a + b == c


class BalancedBrackets:
    """Balanced strings over ``()[]`` (see the module docstring)."""

    name = "brackets"
    _closing = {")": "(", "]": "["}

    def __init__(self, max_length: int = 16, num_train: int = 20000, num_heldout: int = 1000, seed: int = 0):
        if max_length < 2:
            raise ValueError(f"`max_length` must be at least 2, got {max_length}.")
        self.max_length, self.num_train, self.num_heldout, self.seed = max_length, num_train, num_heldout, seed

    @property
    def max_chars(self) -> int:
        return self.max_length

    def texts(self, split: str = "train") -> list[str]:
        """Random balanced strings: `num_train` for `"train"`, `num_heldout` (other draws) for `"heldout"`."""
        if split not in ("train", "heldout"):
            raise ValueError(f"Unknown split {split!r}; choose 'train' or 'heldout'.")
        rng = random.Random(f"{self.seed}-{split}")
        return [self._draw(rng) for _ in range(self.num_train if split == "train" else self.num_heldout)]

    def _draw(self, rng: random.Random) -> str:
        """A length ``2k`` (k uniform), then at each position an open or a close, uniformly among the legal ones."""
        pairs = rng.randint(1, self.max_length // 2)
        opens_left, stack, out = pairs, [], []
        while opens_left or stack:
            if opens_left and (not stack or rng.random() < 0.5):
                stack.append(rng.choice("(["))
                out.append(stack[-1])
                opens_left -= 1
            else:
                out.append(")" if stack.pop() == "(" else "]")
        return "".join(out)

    def is_valid(self, text: str) -> bool:
        if not 0 < len(text) <= self.max_length:
            return False
        stack = []
        for char in text:
            if char in "([":
                stack.append(char)
            elif char not in self._closing or not stack or stack.pop() != self._closing[char]:
                return False
        return not stack


class SudokuGrids:
    """Solved 4x4 Sudoku grids as 16 digits, row by row (``"1234341221434321"``): every row, column and 2x2 box holds
    1-4 once. All 288 grids are enumerable; a fixed, seeded share is held out of training. Every constraint spans
    positions up to 12 apart, so a sequence model must get long-range structure right."""

    name = "sudoku"
    max_chars = 16
    _units = ([[4 * r + c for c in range(4)] for r in range(4)] + [[4 * r + c for r in range(4)] for c in range(4)]
              + [[4 * (r + dr) + c + dc for dr in (0, 1) for dc in (0, 1)] for r in (0, 2) for c in (0, 2)])

    def __init__(self, heldout_fraction: float = 0.1, seed: int = 0):
        if not 0 <= heldout_fraction < 1:
            raise ValueError(f"`heldout_fraction` must be in [0, 1), got {heldout_fraction}.")
        self.heldout_fraction, self.seed = heldout_fraction, seed

    def texts(self, split: str = "train") -> list[str]:
        """The grids of `split` (`"train"`, `"heldout"` or `"all"`), in a fixed order."""
        return split_texts(self._all_grids(), split, self.heldout_fraction, self.seed)

    def _all_grids(self) -> list[str]:
        """Every solved grid, by filling cells in order with the digits their units still allow."""
        grids, cells = [], [""] * 16

        def fill(position: int):
            if position == 16:
                grids.append("".join(cells))
                return
            for digit in "1234":
                if all(cells[i] != digit for unit in self._units if position in unit for i in unit):
                    cells[position] = digit
                    fill(position + 1)
            cells[position] = ""

        fill(0)
        return grids

    def is_valid(self, text: str) -> bool:
        return (len(text) == 16 and set(text) <= set("1234")
                and all(len({text[i] for i in unit}) == 4 for unit in self._units))


SEQUENCE_TASKS = {task.name: task for task in (ArithmeticStatements, BalancedBrackets, SudokuGrids)}


def get_task(name: str, **kwargs):
    """A task of `SEQUENCE_TASKS` by name."""
    if name not in SEQUENCE_TASKS:
        raise ValueError(f"Unknown sequence task {name!r}; choose one of {tuple(SEQUENCE_TASKS)}.")
    return SEQUENCE_TASKS[name](**kwargs)


def valid_fraction(task, texts: list[str]) -> float:
    """Share of `texts` that `task.is_valid` accepts."""
    return sum(task.is_valid(text) for text in texts) / max(len(texts), 1)
