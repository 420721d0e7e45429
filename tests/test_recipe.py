"""The typed training recipe: YAML, dotted overrides, one-line errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from domainlm.errors import DomainLMError
from domainlm.train import recipe as recipe_module
from domainlm.train.recipe import is_manifest, load_manifest, load_recipe

RECIPE = """\
name: law-expert
description: Chinese civil-law Q&A
base: {path: tiny, chat_format: chatglm3}
datasets:
  - {path: data/law.jsonl, weight: 0.8}
  - {path: /abs/general.jsonl, weight: 0.2}
lora: {r: 16, alpha: 32, target_modules: [q_proj, v_proj]}
optim: {lr: 1.0e-4, max_steps: 100, batch_size: 2}
eval: {dev: data/dev.jsonl, eval_steps: 20}
output_dir: out/law-expert
"""


def write(tmp_path: Path, text: str = RECIPE) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_with_defaults_and_relative_paths(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path))
    assert recipe.base.chat_format == "chatglm3" and recipe.lora.target_modules == [
        "q_proj",
        "v_proj",
    ]
    assert recipe.optim.schedule == "cosine" and recipe.optim.packing and recipe.seed == 42
    assert recipe.datasets[0].path == tmp_path / "data" / "law.jsonl"
    assert recipe.datasets[1].path == Path("/abs/general.jsonl")
    assert recipe.eval.dev == tmp_path / "data" / "dev.jsonl"


def test_dotted_overrides_are_typed(tmp_path: Path) -> None:
    recipe = load_recipe(
        write(tmp_path),
        [
            "optim.lr=3e-4",
            "lora.target_modules=all-linear",
            "optim.packing=false",
            "seed=7",
            "base.dtype=bf16",
        ],
    )
    assert recipe.optim.lr == 3e-4 and recipe.lora.target_modules == "all-linear"
    assert recipe.optim.packing is False and recipe.seed == 7 and recipe.base.dtype == "bf16"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=-1"], "recipe.yaml: optim.lr: Input should be greater than 0"),
        (["optim.lrr=1"], "recipe.yaml: optim.lrr: Extra inputs are not permitted"),
        (
            ["optim.epochs=2", "optim.max_steps=3"],
            "recipe.yaml: optim: Value error, give exactly one of max_steps and epochs",
        ),
        (["datasets.2.path=x"], "override 'datasets.2.path=x': datasets.2: no item 2"),
        (
            ["base.chat_format=llama"],
            "recipe.yaml: base.chat_format: Input should be 'auto', 'chatglm3' or 'hf'",
        ),
        (["name=../escape"], "recipe.yaml: name: String should match pattern"),
        (["datasets=[]"], "recipe.yaml: datasets: List should have at least 1 item"),
        (["optim.lr"], "override 'optim.lr': expected KEY=VALUE"),
        (["name.first=x"], "override 'name.first=x': name is not a section"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(DomainLMError) as info:
        load_recipe(write(tmp_path), overrides)
    assert str(info.value).startswith(
        message.replace("recipe.yaml", str(tmp_path / "recipe.yaml"))
    ), str(info.value)


def test_bad_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DomainLMError, match="no such recipe"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(DomainLMError, match="not valid YAML"):
        load_recipe(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(DomainLMError, match=r"a YAML mapping .* this file is a YAML list"):
        load_recipe(write(tmp_path, "- just a list\n"))
    with pytest.raises(DomainLMError, match="this file is empty"):
        load_recipe(write(tmp_path, ""))
    with pytest.raises(DomainLMError, match="is a folder; pass a recipe YAML file"):
        load_recipe(tmp_path)
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x00\xff\xfe weights")
    with pytest.raises(DomainLMError, match=r"not a YAML recipe \(not UTF-8 text"):
        load_recipe(binary)
    unreadable = write(tmp_path)

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)  # tests run as root: chmod would not do
    with pytest.raises(DomainLMError, match="cannot read the recipe: Permission denied"):
        load_recipe(unreadable)
    monkeypatch.undo()
    with pytest.raises(DomainLMError, match="base: Field required"):
        load_recipe(
            write(tmp_path, RECIPE.replace("base: {path: tiny, chat_format: chatglm3}\n", ""))
        )


def test_readme_overrides_replace_the_other_of_max_steps_and_epochs(tmp_path: Path) -> None:
    # README: `domainlm train recipes/smollm2_law_sft.yaml optim.lr=1e-4 optim.max_steps=200`
    # on a recipe that sets epochs.
    recipe = load_recipe(RECIPES / "smollm2_law_sft.yaml", ["optim.lr=1e-4", "optim.max_steps=200"])
    assert recipe.optim.max_steps == 200 and recipe.optim.epochs is None
    assert recipe.optim.lr == 1e-4
    recipe = load_recipe(RECIPES / "tiny_sft.yaml", ["optim.epochs=2"])  # sets max_steps
    assert recipe.optim.epochs == 2 and recipe.optim.max_steps is None
    # A manifest entry's max_steps replaces its defaults' epochs the same way.
    path = tmp_path / "experts.yaml"
    path.write_text(
        "defaults: {base: {path: tiny}, optim: {epochs: 2, lr: 1.0e-3}, output_dir: out}\n"
        "experts:\n  - {name: a, datasets: [{path: a.jsonl}]}\n"
        "  - {name: b, datasets: [{path: b.jsonl}], optim: {max_steps: 5}}\n",
        encoding="utf-8",
    )
    a, b = load_manifest(path)
    assert (a.optim.epochs, a.optim.max_steps) == (2, None)
    assert (b.optim.epochs, b.optim.max_steps, b.optim.lr) == (None, 5, 1e-3)
    a, b = load_manifest(path, ["optim.max_steps=7"])
    assert a.optim.max_steps == b.optim.max_steps == 7 and a.optim.epochs is None


def test_paths_in_yaml_are_relative_to_it_and_on_the_command_line_to_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipes, work = tmp_path / "project" / "recipes", tmp_path / "work"
    recipes.mkdir(parents=True)
    work.mkdir()
    monkeypatch.chdir(work)
    path = recipes / "law.yaml"
    path.write_text(
        RECIPE.replace("path: tiny", "path: ../models/base")
        .replace("data/law.jsonl", "../data/splits/train.jsonl")
        .replace("out/law-expert", "../experts"),
        encoding="utf-8",
    )
    project = tmp_path / "project"
    recipe = load_recipe(path)
    # Every path written in the YAML: against the YAML's folder, normalised (no `..`).
    assert recipe.datasets[0].path == project / "data" / "splits" / "train.jsonl"
    assert recipe.eval.dev == recipes / "data" / "dev.jsonl"
    assert recipe.output_dir == project / "experts"
    assert recipe.base.path == str(project / "models" / "base")
    # Every path on the command line: against the working directory, also in lists.
    recipe = load_recipe(
        path,
        [
            "datasets.1.path=mine.jsonl",
            "eval.dev=dev.jsonl",
            "output_dir=out",
            "base.path=models/b",
            "from_expert=../experts/pt",
        ],
    )
    assert [d.path for d in recipe.datasets] == [
        project / "data" / "splits" / "train.jsonl",
        work / "mine.jsonl",
    ]
    assert recipe.eval.dev == work / "dev.jsonl" and recipe.output_dir == work / "out"
    assert recipe.base.path == str(work / "models" / "b")
    assert recipe.from_expert == tmp_path / "experts" / "pt"
    recipe = load_recipe(path, ["datasets=[{path: a.jsonl}]", "base.path=default"])
    assert recipe.datasets[0].path == work / "a.jsonl" and recipe.base.path == "default"
    # A manifest's paths: against the manifest's folder.
    manifest = recipes / "experts.yaml"
    manifest.write_text(
        "defaults: {base: {path: tiny}, optim: {max_steps: 1}, output_dir: ../experts}\n"
        "experts: [{name: a, datasets: [{path: ../data/a.jsonl}]}]\n",
        encoding="utf-8",
    )
    (entry,) = load_manifest(manifest)
    assert entry.output_dir == project / "experts"
    assert entry.datasets[0].path == project / "data" / "a.jsonl"


def test_every_recipe_field_is_described() -> None:
    sections = [
        v
        for v in vars(recipe_module).values()
        if isinstance(v, type)
        and issubclass(v, BaseModel)
        and v.__module__ == recipe_module.__name__
    ]
    assert len(sections) >= 6
    for section in sections:
        for name, field in section.model_fields.items():
            assert field.description, f"{section.__name__}.{name} has no description"


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_names_its_command(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    if first.startswith(f"# domainlm serve recipes/{path.name}"):
        from domainlm.serve.settings import load_settings

        assert load_settings(path).profiles  # a serve config (test_serve tests it further)
        return
    assert first.startswith(f"# domainlm train recipes/{path.name}")
    recipes = load_manifest(path) if is_manifest(path) else [load_recipe(path)]
    assert recipes and all(r.name and r.datasets for r in recipes)
    for recipe in recipes:
        # Run from the repository root or anywhere else: experts land beside recipes/.
        assert recipe.output_dir.is_relative_to(RECIPES.parent / "experts")
        for dataset in recipe.datasets:
            # Paths under examples/ ship with DomainLM; ../data/ is the user's own.
            if "examples" in dataset.path.parts:
                assert dataset.path.is_file(), dataset.path


@pytest.mark.parametrize(
    "path", sorted((RECIPES / "accelerate").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_accelerate_config_is_valid(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# accelerate launch --config_file recipes/accelerate/")
    command_recipe = first.split(" train ")[1].split()[0]
    assert (RECIPES.parent / command_recipe).is_file()
    config = load_config_from_file(str(path))
    assert config.num_processes >= 2 and config.mixed_precision == "bf16"


def test_manifest_errors_name_the_expert(tmp_path: Path) -> None:
    path = tmp_path / "experts.yaml"
    path.write_text(
        "defaults: {base: {path: tiny}, optim: {max_steps: 1}, output_dir: out}\n"
        "experts:\n  - {name: a, datasets: [{path: a.jsonl}]}\n  - {name: b}\n",
        encoding="utf-8",
    )
    with pytest.raises(DomainLMError, match=r"experts\[1\] \(b\): datasets: Field required"):
        load_manifest(path)
    path.write_text("experts: []\n", encoding="utf-8")
    with pytest.raises(DomainLMError, match="non-empty list"):
        load_manifest(path)
    path.write_text("experts: [{name: a}]\nrecipe: 1\n", encoding="utf-8")
    with pytest.raises(DomainLMError, match="unknown key"):
        load_manifest(path)
