"""Stand-in for modules/scripts.py: Script, AlwaysVisible, PostSampleArgs and a runner that
passes each script its ui() values and reports (not raises) a script's errors."""

import logging

AlwaysVisible = object()


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class Script:
    args_from = args_to = None

    def title(self):
        return ""

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        return []

    def process_batch(self, p, *args, **kwargs):
        pass

    def before_hr(self, p, *args):
        pass

    def post_sample(self, p, ps, *args):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass


class ScriptRunner:
    def __init__(self, scripts):
        self.scripts = scripts

    def _each(self, name, call):
        for s in self.scripts:
            try:
                call(s)
            except Exception:
                logging.getLogger("webui").exception("Error running %s: %s", name, type(s).__name__)

    def process_batch(self, p, **kwargs):
        self._each("process_batch", lambda s: s.process_batch(p, *p.script_args[s.args_from:s.args_to], **kwargs))

    def before_hr(self, p):
        self._each("before_hr", lambda s: s.before_hr(p, *p.script_args[s.args_from:s.args_to]))

    def post_sample(self, p, ps):
        self._each("post_sample", lambda s: s.post_sample(p, ps, *p.script_args[s.args_from:s.args_to]))

    def postprocess_batch(self, p, images, **kwargs):
        self._each("postprocess_batch", lambda s: s.postprocess_batch(p, *p.script_args[s.args_from:s.args_to], images=images, **kwargs))

    def postprocess(self, p, processed):
        self._each("postprocess", lambda s: s.postprocess(p, processed, *p.script_args[s.args_from:s.args_to]))
