"""A valid comparison request, input by input, for the tests that call the app's handlers and its API."""

PROMPT = "a red circle on the left on a blue background"


def compare_args(**changes) -> dict:
    """/compare's inputs by the API's names and in the page's order, at valid values (without the session's
    history, which only the page's own handler takes), with `changes` applied."""
    args = dict(
        prompt=PROMPT,
        negative_prompt="",
        seed=42,
        steps=2,
        guidance=4.0,
        model="tiny-shapes",
        prune_percent=30,
        prune_method="l1-unstructured",
        prune_scope="all",
        quant_mode="fp32",
        bits=4,
        height=0,
        width=0,
        recover_steps=0,
    )
    unknown = set(changes) - set(args) - {"history"}
    if unknown:
        raise KeyError(f"not an input of /compare: {sorted(unknown)}")
    return {**args, **changes}
