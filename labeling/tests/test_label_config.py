"""Label configs as Label Studio's templates write them, and the ones we refuse."""

import pytest

from labeling.label_config import LabelConfigError, object_text, parse_label_config

# Label Studio's "Text Classification" template.
TEXT_CLASSIFICATION = """<View>
  <Text name="text" value="$text"/>
  <View style="box-shadow: 2px 2px 5px #999; padding: 20px; margin-top: 2em; border-radius: 5px;">
    <Header value="Choose text sentiment"/>
    <Choices name="sentiment" toName="text" choice="single" showInLine="true">
      <Choice value="Positive"/>
      <Choice value="Negative"/>
      <Choice value="Neutral"/>
    </Choices>
  </View>
</View>"""

# Label Studio's "Named Entity Recognition" template.
NER = """<View>
  <Labels name="label" toName="text">
    <Label value="PER" background="red"/>
    <Label value="ORG" background="darkorange"/>
    <Label value="LOC" background="orange"/>
    <Label value="MISC" background="green"/>
  </Labels>
  <Text name="text" value="$text"/>
</View>"""

# Several questions about one LLM answer ("candidate evaluation").
EVALUATION = """<View>
  <Style>.answer { padding: 10px; }</Style>
  <Text name="prompt" value="$prompt"/>
  <Text name="answer" value="$answer"/>
  <Choices name="helpful" toName="answer"><Choice value="Yes"/><Choice value="No"/></Choices>
  <Choices name="harmless" toName="answer"><Choice value="Yes"/><Choice value="No"/></Choices>
  <Rating name="overall" toName="answer" maxRating="10" icon="star"/>
  <Choices name="problems" toName="answer" choice="multiple">
    <View><Choice value="Factual error"/><Choice value="Too long"/></View>
    <Choice value="Off topic" alias="off-topic"/>
  </Choices>
  <TextArea name="why" toName="answer" rows="3"/>
  <Number name="minutes" toName="answer" min="0" max="60" step="0.5"/>
</View>"""


def test_text_classification_template():
    config = parse_label_config(TEXT_CLASSIFICATION)
    (control,) = config.controls
    assert (control.name, control.type, control.to_name) == ("sentiment", "choices", "text")
    assert control.labels == ("Positive", "Negative", "Neutral")
    assert not control.multiple
    assert config.objects["text"].variable == "text"
    assert config.variables == ["text"]
    assert config.skipped == ()


def test_ner_template_with_labels_before_text():
    config = parse_label_config(NER)
    (control,) = config.controls
    assert (control.type, control.to_name, control.labels) == ("labels", "text", ("PER", "ORG", "LOC", "MISC"))


def test_several_controls_over_one_text():
    config = parse_label_config(EVALUATION)
    assert [(c.name, c.type) for c in config.controls] == [
        ("helpful", "choices"),
        ("harmless", "choices"),
        ("overall", "rating"),
        ("problems", "choices"),
        ("why", "textarea"),
        ("minutes", "number"),
    ]
    overall, problems, minutes = config.controls[2], config.controls[3], config.controls[5]
    assert overall.max_rating == 10
    assert problems.multiple and problems.labels == ("Factual error", "Too long", "off-topic")
    assert (minutes.minimum, minutes.maximum, minutes.integer) == (0, 60, False)
    assert config.variables == ["answer"]


def test_rating_defaults_to_five_and_number_to_integers():
    config = parse_label_config(
        '<View><Text name="t" value="$t"/><Rating name="r" toName="t"/><Number name="n" toName="t"/></View>'
    )
    rating, number = config.controls
    assert rating.max_rating == 5
    assert number.integer and number.minimum is None and number.maximum is None


def test_per_region_and_conditional_controls_are_skipped_with_a_reason(caplog):
    config = parse_label_config("""<View>
      <Labels name="label" toName="text"><Label value="PER"/></Labels>
      <Text name="text" value="$text"/>
      <TextArea name="note" toName="text" perRegion="true"/>
      <Choices name="kind" toName="text" visibleWhen="region-selected" whenTagName="label">
        <Choice value="A"/></Choices>
      <View visibleWhen="choice-selected" whenTagName="label">
        <Rating name="stars" toName="text"/>
      </View>
    </View>""")
    assert [c.name for c in config.controls] == ["label"]
    reasons = {s.name: s.reason for s in config.skipped}
    assert "perRegion" in reasons["note"]
    assert "conditionally" in reasons["kind"]
    assert "conditionally" in reasons["stars"]


def test_unsupported_controls_and_objects_are_reported_not_invented():
    config = parse_label_config("""<View>
      <Image name="image" value="$image"/>
      <RectangleLabels name="box" toName="image"><Label value="Car"/></RectangleLabels>
      <Choices name="scene" toName="image"><Choice value="Day"/></Choices>
      <HyperText name="html" value="$html"/>
      <Labels name="spans" toName="html"><Label value="X"/></Labels>
      <Text name="text" value="$text"/>
      <Taxonomy name="tax" toName="text"><Choice value="A"/></Taxonomy>
      <Choices name="empty" toName="text"/>
      <Choices name="ghost" toName="nothing"><Choice value="A"/></Choices>
      <Choices name="ok" toName="html"><Choice value="A"/></Choices>
    </View>""")
    assert [c.name for c in config.controls] == ["ok"]
    reasons = {s.name: s.reason for s in config.skipped}
    assert set(reasons) == {"box", "scene", "spans", "tax", "empty", "ghost"}
    assert "not supported" in reasons["box"] and "not supported" in reasons["tax"]
    assert "not text" in reasons["scene"]
    assert "<Text>" in reasons["spans"]
    assert "no <Choice>" in reasons["empty"]
    assert "names no object" in reasons["ghost"]


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("", "empty"),
        ("<View><Text name='t' value='$t'>", "not well-formed"),
        ("<View><Text name='t' value='$t'/></Veiw>", "not well-formed"),
        ("<View><Choices name='c' toName='t'/></View>", "no object tag"),
        ("<View><Text name='t' value='$t'/><Rating name='r' toName='t' maxRating='many'/></View>", "non-numeric"),
        ("<View><Text name='t' value='$t'/><Rating toName='t'/></View>", "no name"),
        (
            "<View><Text name='t' value='$t'/><Rating name='r' toName='t'/><Rating name='r' toName='t'/></View>",
            "Two controls",
        ),
        (
            "<View><Text name='t' value='$t'/><Choices name='c' toName='t'><Choice/></Choices></View>",
            "has no value",
        ),
    ],
)
def test_bad_configs_are_refused_with_a_reason(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


@pytest.mark.parametrize(
    "xml",
    [
        # Billion laughs.
        '<!DOCTYPE v [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        '<View><Text name="t" value="&b;"/></View>',
        # External entity.
        '<!DOCTYPE v [<!ENTITY x SYSTEM "file:///etc/passwd">]><View><Text name="t" value="&x;"/></View>',
        # External DTD.
        '<!DOCTYPE View SYSTEM "http://example.com/x.dtd"><View><Text name="t" value="$t"/></View>',
    ],
)
def test_entities_and_dtds_are_refused(xml):
    with pytest.raises(LabelConfigError, match="forbidden XML construct"):
        parse_label_config(xml)


def test_variables_resolve_from_task_data():
    config = parse_label_config(
        '<View><Paragraphs name="dialog" value="$dialog" nameKey="who" textKey="said"/>'
        '<Choices name="c" toName="dialog"><Choice value="A"/></Choices><Text name="n" value="$n"/></View>'
    )
    dialog = config.objects["dialog"]
    assert object_text(dialog, {"dialog": [{"who": "Ann", "said": "Hi"}, {"who": "Bob", "said": "Hey"}]}) == (
        "Ann: Hi\nBob: Hey"
    )
    assert object_text(config.objects["n"], {"n": 42}) == "42"
    assert object_text(config.objects["n"], {"other": "x"}) is None
    assert object_text(config.objects["n"], {"n": {"nested": 1}}) is None
