"""Shapes of the patient index API for the OpenAPI schema (FHIR bodies are validated by
exchange/mpi/api/fhir.py, which knows FHIR's rules better than a serializer would)."""

from rest_framework import serializers


class FhirIdentifierSerializer(serializers.Serializer):
    system = serializers.CharField(help_text="the hospital's assigning authority, or urn:oid:2.16.156.10011.1.5 "
                                   "(or 'RIC') for the Resident Identity Card number")
    value = serializers.CharField()


class FhirHumanNameSerializer(serializers.Serializer):
    use = serializers.CharField(required=False)
    text = serializers.CharField(required=False, help_text="whole name; hanzi here with pinyin family/given is accepted")
    family = serializers.CharField(required=False)
    given = serializers.ListField(child=serializers.CharField(), required=False)
    extension = serializers.ListField(child=serializers.DictField(), required=False,
                                      help_text="iso21090-EN-representation: IDE (hanzi), ABC (pinyin), SYL (phonetic)")


class FhirPatientSerializer(serializers.Serializer):
    """FHIR R4 Patient (subset the patient index reads and answers)."""

    resourceType = serializers.ChoiceField(choices=["Patient"])
    id = serializers.CharField(read_only=True, help_text="enterprise id (UUID)")
    identifier = FhirIdentifierSerializer(many=True)
    name = FhirHumanNameSerializer(many=True, required=False)
    gender = serializers.ChoiceField(choices=["male", "female", "other", "unknown"], required=False)
    birthDate = serializers.DateField(required=False)
    telecom = serializers.ListField(child=serializers.DictField(), required=False)


class FhirBundleEntrySerializer(serializers.Serializer):
    fullUrl = serializers.CharField()
    resource = FhirPatientSerializer()
    search = serializers.DictField(help_text="mode 'match'; for $match also score (0-1) and the match-grade extension")


class FhirBundleSerializer(serializers.Serializer):
    resourceType = serializers.ChoiceField(choices=["Bundle"])
    type = serializers.ChoiceField(choices=["searchset"])
    total = serializers.IntegerField()
    entry = FhirBundleEntrySerializer(many=True)


class FhirParametersSerializer(serializers.Serializer):
    resourceType = serializers.ChoiceField(choices=["Parameters"])
    parameter = serializers.ListField(child=serializers.DictField())


class OperationOutcomeSerializer(serializers.Serializer):
    resourceType = serializers.ChoiceField(choices=["OperationOutcome"])
    issue = serializers.ListField(child=serializers.DictField())
