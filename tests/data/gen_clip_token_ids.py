# Token ids of OpenAI CLIP's SimpleTokenizer (open_clip's copy, from the open_clip_torch wheel)
# for sdtrace's built-in vocabulary test. Run with ftfy and regex installed (no torch needed):
#   pip download open_clip_torch==3.3.0 --no-deps && unzip the wheel
#   python gen_clip_token_ids.py clip_openai_token_ids.json WHEEL_DIR/open_clip
import importlib.util, json, sys, types
_t = types.ModuleType("torch"); _t.LongTensor = object; _t.Tensor = object; sys.modules["torch"] = _t; sys.modules["numpy"] = types.ModuleType("numpy")
spec = importlib.util.spec_from_file_location("oc_tokenizer", sys.argv[2] + "/tokenizer.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
tok = mod.SimpleTokenizer(sys.argv[2] + "/bpe_simple_vocab_16e6.txt.gz")
prompts = [
    # The original report's settings (anything-v3, DPM++ 2M Karras); its prompt text was not
    # published with them, so this is an anime-model prompt of that era.
    "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile, school uniform, cherry blossoms, outdoors",
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry",
    "a photo of an astronaut riding a horse on mars",
    "A painting of a fox sitting in a field at sunrise in the style of Claude Monet",
    "",
    "   leading and trailing spaces   ",
    "multiple    spaces\tand\nnewlines",
    "UPPER lower MiXeD",
    "it's a dog's life, we'll see, they're here, I'm fine, you've been, he'd go",
    "1024x768, 8k uhd, 4k, 35mm, f/1.8, 1girl 2boys",
    "!!! ??? ... --- ___ *** ### @@@",
    "(masterpiece:1.2), [worst quality], {{{best}}}",
    "café, naïve, résumé, Zoë, jalapeño",
    "猫と犬、東京の夜景",
    "emoji 🙂🐱🚀 test",
    "tom &amp; jerry &lt;3 &quot;quoted&quot;",
    # (No literal "<|startoftext|>": open_clip renamed its special tokens to <start_of_text>,
    # so its copy no longer splits OpenAI's out as OpenAI's and HF's tokenizers do.)
    "hyphen-ated words, snake_case, CamelCase, dot.separated",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a cat, a dog, a bird, a fish, a horse, a cow, a pig, a sheep, a goat, a duck, a chicken, a rabbit, a mouse, a rat, a bat, a bee, a fly, an ant, a frog, a toad, a snake, a lizard, a turtle, a whale, a shark, an eel, a crab, a lobster",
    "highly detailed digital painting, artstation, concept art, smooth, sharp focus, illustration, art by greg rutkowski and alphonse mucha",
    "numbers 0 1 2 3 10 100 1000 3.14159 -42 +7 1e10",
    "tabs\tbetween\twords",
    "ÀÉÎÕÜ ß ẞ Σίσυφος",
    # What ftfy.fix_text changes (and sdtrace reproduces): quotes, ligatures, fullwidth forms,
    # terminal escapes, control characters.
    "don’t ‘single’ “double” „low‟ ʼs",
    "ﬁne ﬂower ﬀ ﬃ ﬄ ﬅ ﬆ Ĳ ĳ ŉ ǅ",
    "ＡＢＣ　ｆｕｌｌｗｉｄｔｈ！ １２３",
    "\x1b[31mred\x1b[0m text\x00with\x7fcontrols\ufeff",
]
out = [{"text": p, "ids": tok.encode(p)} for p in prompts]
json.dump({"source": "open_clip_torch 3.3.0 SimpleTokenizer (OpenAI CLIP BPE, bpe_simple_vocab_16e6.txt.gz sha256 924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a), encode() without special tokens, ftfy " + __import__("ftfy").__version__, "cases": out}, open(sys.argv[1], "w"), ensure_ascii=False, indent=1)
