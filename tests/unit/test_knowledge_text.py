"""How articles are cut into chunks: the heading path a search hit cites, and its text."""

from servers.knowledge.text import QUERY_K, chunk_article, query_sparse, term_index, terms

ARTICLE = """Intro line.

# Cards
## Lost card
Freeze it in the app.

### Abroad
Call the number on the back.

## Fees
None.
"""


def test_each_chunk_cites_the_headings_above_it() -> None:
    chunks = chunk_article(ARTICLE)
    assert [(c.headings, c.text) for c in chunks] == [
        ((), "Intro line."),
        (("Cards", "Lost card"), "Freeze it in the app."),
        (("Cards", "Lost card", "Abroad"), "Call the number on the back."),
        (("Cards", "Fees"), "None."),
    ]
    assert [c.index for c in chunks] == [0, 1, 2, 3]


def test_a_long_section_is_cut_into_overlapping_windows() -> None:
    body = "# Long\n" + " ".join(f"w{i}" for i in range(250))
    chunks = chunk_article(body, max_words=100, overlap_words=20)
    assert [c.text.split()[0] for c in chunks] == ["w0", "w80", "w160"]
    assert chunks[-1].text.split()[-1] == "w249"
    assert all(c.headings == ("Long",) for c in chunks)


def test_hash_lines_inside_code_blocks_are_not_headings() -> None:
    body = """# Reset your PIN
Run this:

```bash
# stop the agent first
pinctl reset
```

~~~~
## not a heading either
~~~
### still code: a shorter fence does not close a longer one
~~~~

## Afterwards
Sign in again.
"""
    chunks = chunk_article(body)
    assert [c.headings for c in chunks] == [("Reset your PIN",), ("Reset your PIN", "Afterwards")]
    assert "# stop the agent first" in chunks[0].text
    assert "### still code" in chunks[0].text
    assert chunks[1].text == "Sign in again."


def test_an_unclosed_code_block_runs_to_the_end() -> None:
    chunks = chunk_article("# Setup\n```\n# comment\nmake install\n")
    assert [(c.headings, c.text) for c in chunks] == [(("Setup",), "```\n# comment\nmake install")]


def test_pairs_of_words_tell_apart_names_that_share_a_word() -> None:
    assert "light_blue" in terms("My Light Blue account") and "sky_blue" in terms("Sky Blue")
    assert "gold_plu" in terms("the Gold Plus account")  # 'plus' loses its 's' like any plural
    assert "gold_plu" not in terms("the Gold account, plus interest")


def test_a_query_weighs_what_it_repeats_more_but_never_without_bound() -> None:
    query = "wire " * 5 + "dog garden"
    weights = dict(zip(*query_sparse(query), strict=True))
    wire, dog = weights[term_index("wire")], weights[term_index("dog")]
    assert wire > 3 * dog and dog == 1.0
    flood = dict(zip(*query_sparse("wire " * 1000), strict=True))[term_index("wire")]
    assert flood < QUERY_K + 1
